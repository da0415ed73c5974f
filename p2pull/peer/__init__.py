"""The peer-to-peer layer's pure core: no I/O, no clock reads (``now`` is passed in), no
unseeded randomness (nonces are passed in), so all of it is tested deterministically; the trio
shell that drives it (``p2pull.swarm``) stays thin.

- ``messages``: one frozen dataclass per message, ``encode``/``decode`` (msgpack).
- ``wire``: ``PeerConnection``, an h11-style machine: bytes in, events out; the length-prefixed
  framing and the HMAC handshake that authenticates a peer with the cluster secret.
- ``scheduler``: which chunk to ask of which peer (reader window first, then rarest-first,
  spread across peers, endgame duplicates, timeouts and penalties).
- ``session`` and ``events``: one blob's swarm as a state machine (``BlobSession``: events in,
  actions out), with ``relay`` (pushing fresh chunks), ``superseed``, ``latecomers`` and
  ``serving`` (upload admission, shared by a node's sessions).
"""
