"""The peer-to-peer layer's pure core: wire messages, framing + handshake, chunk scheduling.

Nothing here does I/O, reads a clock or draws randomness (nonces and ``now`` are passed in), so
all of it is tested deterministically; the trio shell that drives it over TCP stays thin.

- ``p2pull.peer.messages``: one frozen dataclass per message, ``encode``/``decode`` (msgpack).
- ``p2pull.peer.wire``: ``PeerConnection``, an h11-style machine: bytes in, events out; the
  length-prefixed framing and the HMAC handshake that authenticates a peer with the cluster secret.
- ``p2pull.peer.scheduler``: ``Scheduler``, which chunk to ask of which peer (reader window first,
  then rarest-first, spread across peers, endgame duplicates, timeouts and penalties).
"""
