"""The swarm's I/O shell: agents exchanging a blob's chunks over trio streams.

The protocol is pure (``p2pull.peer``: messages, framing and handshake, the scheduler, the blob
session, upload admission) and so is membership (``p2pull.membership``); this package drives
them: ``transport`` (TCP, or the in-memory network of the tests), ``links`` (authenticated
connections), ``driver`` (one task per blob being downloaded, carrying out its session's
actions), ``node`` (the listener, message dispatch and uploads).
"""
