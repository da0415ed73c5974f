"""Run a :class:`TestOrigin` as its own process, for tests and benchmarks across namespaces.

    python -m p2pull.testing.serve --host 198.18.7.10 --port 0 --name bench/blob \
        --size 64MiB --seed 1 [--layers K] [--rate BYTES_PER_S]

Binds ``--host`` (the origin and its CDN listener), fills it with deterministic content, then
prints one JSON line on stdout once listening::

    {"url": "http://H:P", "netloc": "H:P", "name": ..., "digests": [...], "sizes": [...],
     "size": <sum of sizes>, "manifest": <digest or null>, "tag": <tag or null>}

Without ``--layers`` the content is one random blob of ``--size`` bytes (``manifest`` is null).
With ``--layers K`` it is an OCI image tagged ``latest`` whose K layers split ``--size``;
``digests`` are the layer digests. On SIGTERM or SIGINT it prints ``{"bytes_sent": N}`` (body
bytes the origin sent, all digests together) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
from typing import Any

import trio

from p2pull.testing.origin import TestOrigin

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
    return [_randbytes(rng, base + (1 if i < extra else 0)) for i in range(layers)]


def _randbytes(rng: random.Random, count: int) -> bytes:
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


async def serve(args: argparse.Namespace) -> None:
    origin = TestOrigin(host=args.host)
    if args.rate:
        origin.faults.rate = float(args.rate)
    content = fill(origin, args)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            emit({"url": origin.url, "netloc": origin.netloc, **content})
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    emit({"bytes_sent": origin.bytes_sent})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m p2pull.testing.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="IP address to listen on")
    parser.add_argument("--port", type=int, default=0, help="only 0 (any free port) for now")
    parser.add_argument("--name", default="test/blob", help="repository name")
    parser.add_argument("--size", type=parse_bytes, required=True, help="total bytes, e.g. 64MiB")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random content")
    parser.add_argument("--layers", type=int, default=0, help="serve an image of K layers")
    parser.add_argument(
        "--rate", type=parse_bytes, default=0, help="throttle each body to BYTES/s (0: no limit)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.port != 0:
        parser.error("--port: TestOrigin listens on a free port; pass 0 and read the JSON line")
    if args.layers < 0 or (not args.layers and args.size < 1) or args.size < args.layers:
        parser.error("--size must be at least 1 byte per blob and --layers must not be negative")
    trio.run(serve, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
