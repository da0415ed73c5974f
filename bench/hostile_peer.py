"""A swarm member that knows the cluster secret and misbehaves, for ``bench/faults.py``.

    python3 bench/hostile_peer.py --mode stall|corrupt|garbage|disconnect --me IP:PORT \
        --agents IP:PORT,... --secret-file F --digest D --size N --chunk-size N --name NAME \
        --ns NS --start-at EPOCH [--content-seed S]

At ``--start-at`` it dials every agent, authenticates (the real handshake: ``RawSession``) and
says ``Interested`` in the blob; to every agent that asks it claims to hold all of it
(``BlobInfo`` with every bit set). Then, per ``--mode``:

- ``stall``: takes requests and never answers them (nor closes);
- ``corrupt``: answers each request with random bytes of the right length;
- ``garbage``: after the handshake sends frames that are not msgpack messages (and one declaring
  a frame far over the limit), then dials again;
- ``disconnect``: answers a request with the right chunk (``--content-seed``: the origin's
  content, as ``python -m p2pull.testing.serve --seed`` makes it) and closes the link at once,
  then dials again.

It also listens on ``--me`` (an agent handed it out may dial it) and behaves the same there. On
SIGTERM it prints one JSON line of counters and exits.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import struct
import sys
import time
from collections import Counter
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pull.membership import Member  # noqa: E402
from p2pull.peer.messages import BlobInfo, Cancel, Interested, Piece, Push, Request  # noqa: E402
from p2pull.peer.wire import Authenticated, Closed  # noqa: E402
from p2pull.store.types import chunk_count  # noqa: E402
from p2pull.testing.serve import make_content  # noqa: E402
from tests.fake_peer import RawSession  # noqa: E402

MODES = ("stall", "corrupt", "garbage", "disconnect")
REDIAL_DELAY = 0.5


class Hostile:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        host, _, port = args.me.rpartition(":")
        self.host, self.port = host, int(port)
        self.node_id = Member.of(host, int(port)).node_id
        self.secret = Path(args.secret_file).read_bytes().strip()
        self.counts: Counter[str] = Counter()
        self.content = b""
        if args.mode == "disconnect":
            self.content = make_content(args.size, seed=args.content_seed, layers=1)[0]

    def info(self) -> BlobInfo:
        count = chunk_count(self.args.size, self.args.chunk_size)
        bits = bytearray((count + 7) // 8)
        for index in range(count):
            bits[index >> 3] |= 0x80 >> (index & 7)
        return BlobInfo(self.args.digest, self.args.size, self.args.chunk_size, bytes(bits),
                        (b"",) * count)  # fmt: skip

    def chunk(self, index: int) -> bytes:
        start = index * self.args.chunk_size
        end = min(start + self.args.chunk_size, self.args.size)
        if self.args.mode == "corrupt":
            return secrets.token_bytes(max(0, end - start))
        return self.content[start:end]

    async def dial_forever(self, host: str, port: int) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                self.counts["dial_failed"] += 1
            else:
                self.counts["dialed"] += 1
                await self.serve(stream, dialed=True)
            await trio.sleep(REDIAL_DELAY)

    async def serve(self, stream: trio.SocketStream, *, dialed: bool = False) -> None:
        digest = self.args.digest
        session = RawSession(stream, node_id=self.node_id, port=self.port, secret=self.secret)
        async with stream:
            try:
                await session.start()
                while True:
                    event = await session.next_event()
                    if isinstance(event, Closed):
                        return
                    if isinstance(event, Authenticated):
                        self.counts["authenticated"] += 1
                        if self.args.mode == "garbage":
                            await self.send_garbage(stream)
                            return
                        if dialed:
                            await session.send(Interested(digest, self.args.name, self.args.ns))
                    elif isinstance(event, Interested) and event.digest == digest:
                        await session.send(self.info())
                    elif isinstance(event, Push) and event.digest == digest:
                        await session.send(Cancel(digest, event.index))
                    elif isinstance(event, Request) and event.digest == digest:
                        self.counts["requests"] += 1
                        if self.args.mode == "stall":
                            continue
                        await session.send(Piece(digest, event.index, self.chunk(event.index)))
                        self.counts["pieces"] += 1
                        if self.args.mode == "disconnect":
                            return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            except Exception as exc:  # a protocol error the agent caused: count it, go on
                self.counts[f"error {type(exc).__name__}"] += 1
                return

    async def send_garbage(self, stream: trio.SocketStream) -> None:
        """Frames no agent can decode: random bytes, then a header declaring 1 GiB."""
        for _ in range(3):
            body = secrets.token_bytes(200)
            await stream.send_all(struct.pack(">I", len(body)) + body)
            self.counts["garbage_frames"] += 1
        await stream.send_all(struct.pack(">I", 1 << 30) + b"\0" * 64)
        self.counts["garbage_frames"] += 1
        await trio.sleep(0.2)


async def amain(args: argparse.Namespace) -> None:
    hostile = Hostile(args)
    listeners = await trio.open_tcp_listeners(hostile.port, host=hostile.host)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, hostile.serve, listeners)
            sys.stdout.write(json.dumps({"ready": True}) + "\n")
            sys.stdout.flush()

            async def dial_all() -> None:
                await trio.sleep(max(0.0, args.start_at - time.time()))
                for agent in args.agents.split(","):
                    host, _, port = agent.rpartition(":")
                    nursery.start_soon(hostile.dial_forever, host, int(port))

            nursery.start_soon(dial_all)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    sys.stdout.write(json.dumps(dict(hostile.counts)) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--me", required=True, help="IP:PORT this peer listens on")
    parser.add_argument("--agents", required=True, help="IP:PORT,... of the agents' peer ports")
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--chunk-size", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ns", required=True)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--content-seed", type=int, default=1)
    trio.run(amain, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
