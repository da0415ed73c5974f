"""Run one node's mDNS discovery and report its live view: one JSON line on stdout per change.

    python tests/discovery_probe.py --host 198.18.7.11 --port 5051 --expect 4 --timeout 20 [--stay]

Lines: ``{"event": "started", "t": ...}`` once registered, then ``{"event": "view", "t": ...,
"live": ["198.18.7.11:5051", ...]}`` after each change of the live view (``t``: seconds since the
probe started). Exits 0 once ``--expect`` members are live (with ``--stay``: keeps running and
reporting until SIGTERM/SIGINT, then unregisters and exits 0); exits 1 if ``--timeout`` passes
first, and with ``--stay`` exits 2 after ``--lifetime`` seconds in any case (a safety net).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

import trio

from p2pull.discovery.mdns import SERVICE_TYPE, TTL, MdnsDiscovery
from p2pull.membership import Member, Membership


def emit(started: float, event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic() - started, 3), **fields}))
    sys.stdout.flush()


async def probe(args: argparse.Namespace) -> int:
    started = time.monotonic()
    changed = trio.Event()
    status = 1  # until --expect members are seen

    def on_change() -> None:
        changed.set()

    membership = Membership(self_member=Member.of(args.host, args.port))
    membership.on_change = on_change
    discovery = MdnsDiscovery(
        membership, host=args.host, port=args.port, service_type=args.service_type, ttl=args.ttl
    )

    async def on_signal(nursery: trio.Nursery) -> None:
        nonlocal status
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                status = 0  # asked to stop: unregister cleanly
                nursery.cancel_scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal, nursery)
        await nursery.start(discovery.run)
        emit(started, "started")
        with trio.move_on_after(args.timeout) as deadline:
            while True:
                live = [m.node_id for m in membership.live(now=trio.current_time())]
                emit(started, "view", live=live)
                if len(live) >= args.expect and status == 1:
                    status = 0
                    if not args.stay:
                        break
                    deadline.deadline = trio.current_time() + args.lifetime
                changed = trio.Event()
                await changed.wait()
        if deadline.cancelled_caught and args.stay and status == 0:
            status = 2  # lived out --lifetime without a signal
        nursery.cancel_scope.cancel()
    return status


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=5051)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--lifetime", type=float, default=120.0)
    parser.add_argument("--service-type", default=SERVICE_TYPE)
    parser.add_argument("--ttl", type=int, default=TTL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s probe %(message)s")
    sys.exit(trio.run(probe, args))


if __name__ == "__main__":
    main()
