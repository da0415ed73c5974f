"""One pull through a node's mirror, as containerd makes it, for ``bench/faults.py``.

    python3 bench/fault_client.py URL --start-at EPOCH --block BYTES --timeout SECONDS

Waits for ``--start-at``, GETs ``URL`` and reads the body to its end or until it breaks,
hashing it whole and per ``--block`` bytes (the chunk size, so a wrong byte is located to its
chunk), and prints one JSON line: ``status`` (None if no response came), ``bytes``, ``sha256``,
``blocks`` (sha256 of each block received whole, and of the last partial one), ``error`` (why
the body ended short or never came; None for a whole body), ``began`` and ``ended`` (epoch s).
Standard library only: it starts in milliseconds in every node's namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import sys
import time
import urllib.parse


def pull(url: str, *, block: int, timeout: float) -> dict[str, object]:
    parts = urllib.parse.urlsplit(url)
    whole, piece = hashlib.sha256(), hashlib.sha256()
    blocks: list[str] = []
    result: dict[str, object] = {"status": None, "bytes": 0, "error": None}
    received = in_block = 0
    try:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        result["status"] = response.status
        if response.status != 200:
            response.read()
            result["error"] = f"HTTP {response.status}"
        else:
            while data := response.read1(1 << 20):
                whole.update(data)
                received += len(data)
                view = memoryview(data)
                while view:
                    take = min(len(view), block - in_block)
                    piece.update(view[:take])
                    view, in_block = view[take:], in_block + take
                    if in_block == block:
                        blocks.append(piece.hexdigest())
                        piece, in_block = hashlib.sha256(), 0
            length = response.getheader("content-length")
            if length is not None and received != int(length):
                result["error"] = f"body ended (EOF) at {received} of {length} bytes"
    except (OSError, http.client.HTTPException) as exc:  # a timeout is an OSError
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    if in_block:
        blocks.append(piece.hexdigest())
    result.update(bytes=received, sha256=whole.hexdigest(), blocks=blocks)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--block", type=int, default=1 << 20)
    parser.add_argument("--timeout", type=float, default=120.0, help="per socket operation")
    args = parser.parse_args()
    time.sleep(max(0.0, args.start_at - time.time()))
    began = time.time()
    result = pull(args.url, block=args.block, timeout=args.timeout)
    result.update(began=began, ended=time.time())
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
