"""The swarm: agents exchanging a blob's chunks, one origin seed per blob (the I/O shell).

The protocol (``p2pull.peer.wire``), the chunk scheduler (``p2pull.peer.scheduler``) and the
membership/HRW logic (``p2pull.membership``) are pure modules; this package drives them over trio
streams: ``links`` (authenticated connections), ``blobswarm`` (one task per blob being
downloaded), ``node`` (the listener, message dispatch and uploads).
"""
