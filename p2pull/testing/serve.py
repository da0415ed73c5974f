"""Run a :class:`TestOrigin` as its own process, for tests and benchmarks across namespaces.

    python -m p2pull.testing.serve --host 198.18.7.10 --port 0 --name bench/blob \
        --size 64MiB --seed 1 [--layers K] [--rate BYTES_PER_S] [--control]

Binds ``--host`` (the origin on ``--port``, 0 for any free one, and its CDN listener on a free
port), fills it with deterministic content, then prints one JSON line on stdout once listening::

    {"url": "http://H:P", "netloc": "H:P", "name": ..., "digests": [...], "sizes": [...],
     "size": <sum of sizes>, "manifest": <digest or null>, "tag": <tag or null>}

Without ``--layers`` the content is one random blob of ``--size`` bytes (``manifest`` is null).
With ``--layers K`` it is an OCI image tagged ``latest`` whose K layers split ``--size``;
``digests`` are the layer digests. On SIGTERM or SIGINT it prints ``{"bytes_sent": N}`` (body
bytes the origin sent, all digests together) and exits 0.

With ``--control`` it reads commands on stdin, one JSON object a line, and answers each with one
JSON line on stdout, ``{"bytes_sent": N, "requests": N, "sending": N}`` (``sending``: bodies
being sent right now):

- ``{"faults": {"fail_times": 5, "fail_status": 429, "retry_after": 2, ...}}`` sets fields of
  the global :class:`~p2pull.testing.origin.Faults` (an unknown field answers ``{"error": ...}``);
- ``{"interrupt": "reset"}`` or ``{"interrupt": "stall"}``: every body being sent resets, or
  stops sending (for the faults' ``stall_for``, then resets);
- ``{"ranges": true}``: with the counters, the Range header of every GET so far (null: none);
- ``{}``: just the counters.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
from typing import Any

import trio

from p2pull.testing.origin import Faults, TestOrigin

TAG = "latest"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    """``4MiB``, ``64M``, ``1G``, ``1048576`` -> bytes (binary units)."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1] if cleaned and cleaned[-1] in _UNITS else ""
    try:
        value = int(float(cleaned.removesuffix(unit) if unit else cleaned) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"negative size: {text!r}")
    return value


def make_content(size: int, *, seed: int, layers: int) -> list[bytes]:
    """``layers`` deterministic random byte strings whose lengths add up to ``size``."""
    rng = random.Random(seed)
    base, extra = divmod(size, layers)
    return [random_bytes(rng, base + (1 if i < extra else 0)) for i in range(layers)]


def random_bytes(rng: random.Random, count: int) -> bytes:
    """``rng.randbytes`` in 64 MiB steps (it overflows at 256 MiB)."""
    step = 64 << 20
    return b"".join(rng.randbytes(min(step, count - at)) for at in range(0, count, step))


def fill(origin: TestOrigin, args: argparse.Namespace) -> dict[str, Any]:
    """Add the content to ``origin``; what the JSON line says about it."""
    parts = make_content(args.size, seed=args.seed, layers=args.layers or 1)
    manifest = None
    if args.layers:
        digest, digests = origin.add_image(args.name, TAG, parts)
        manifest = str(digest)
    else:
        digests = [origin.add_blob(args.name, parts[0])]
    return {
        "name": args.name,
        "digests": [str(d) for d in digests],
        "sizes": [len(p) for p in parts],
        "size": sum(len(p) for p in parts),
        "manifest": manifest,
        "tag": TAG if args.layers else None,
    }


def emit(fields: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


FAULT_FIELDS = frozenset(f.name for f in dataclasses.fields(Faults))


def control(origin: TestOrigin, command: object) -> dict[str, Any]:
    """Carry out one ``--control`` command; the answer line."""
    if not isinstance(command, dict):
        return {"error": "a command is a JSON object"}
    faults = command.get("faults", {})
    if not isinstance(faults, dict) or not set(faults) <= FAULT_FIELDS:
        return {"error": f"faults: a JSON object of {sorted(FAULT_FIELDS)}"}
    for key, value in faults.items():
        setattr(origin.faults, key, value)
    kind = command.get("interrupt")
    if kind is not None:
        if kind not in ("reset", "stall"):
            return {"error": 'interrupt: "reset" or "stall"'}
        origin.interrupt(kind)
    answer: dict[str, Any] = {
        "bytes_sent": origin.bytes_sent,
        "requests": len(origin.requests),
        "sending": origin.sending,
    }
    if command.get("ranges"):
        answer["ranges"] = [r.range for r in origin.requests if r.method == "GET"]
    return answer


async def read_commands(origin: TestOrigin) -> None:
    """Serve ``--control`` commands from stdin until it closes."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    async with stdin:
        while data := await stdin.receive_some():
            *lines, buffer = (buffer + data).split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        emit(control(origin, json.loads(line)))
                    except ValueError as exc:
                        emit({"error": f"not JSON: {exc}"})


async def serve(args: argparse.Namespace) -> None:
    origin = TestOrigin(host=args.host, port=args.port)
    if args.rate:
        origin.faults.rate = float(args.rate)
    content = fill(origin, args)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            emit({"url": origin.url, "netloc": origin.netloc, **content})
            if args.control:
                nursery.start_soon(read_commands, origin)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    emit({"bytes_sent": origin.bytes_sent})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m p2pull.testing.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="IP address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--name", default="test/blob", help="repository name")
    parser.add_argument("--size", type=parse_bytes, required=True, help="total bytes, e.g. 64MiB")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random content")
    parser.add_argument("--layers", type=int, default=0, help="serve an image of K layers")
    parser.add_argument(
        "--rate", type=parse_bytes, default=0, help="throttle each body to BYTES/s (0: no limit)"
    )
    parser.add_argument(
        "--control", action="store_true", help="read fault commands on stdin (JSON lines)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port: 0 (any free port) to 65535")
    if args.layers < 0 or (not args.layers and args.size < 1) or args.size < args.layers:
        parser.error("--size must be at least 1 byte per blob and --layers must not be negative")
    trio.run(serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
