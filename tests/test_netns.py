"""The namespace harness itself (``tests/netns.py``): what every network test stands on."""

from __future__ import annotations

import json
import sys

from tests.netns import netns_network


async def test_every_host_knows_every_other_hosts_address_without_arp() -> None:
    # A shaped port's full queue drops ARP like any frame: a host whose neighbour entry
    # fails gets "No route to host" from its own connects, a failure of the bench.
    async with netns_network(3, rate_bit=10_000_000) as net:
        for host in net.hosts:
            shown = await net.run(host, "ip", "-j", "neigh", "show", "dev", host.dev)
            entries = {entry["dst"]: entry for entry in json.loads(shown.stdout)}
            assert set(entries) == {other.ip for other in net.hosts if other is not host}
            assert all(entry["state"] == ["PERMANENT"] for entry in entries.values())
        a, c = net.hosts[0], net.hosts[2]  # and the addresses are right: a connects to c
        listen = f"import socket; s = socket.create_server(({c.ip!r}, 5999)); s.accept()"
        await net.start(c, sys.executable, "-c", listen)
        dial = f"import socket, time; time.sleep(0.3); socket.create_connection(({c.ip!r}, 5999))"
        dialed = await net.run(a, sys.executable, "-c", dial, check=False)
        assert dialed.returncode == 0, dialed.stderr.decode()
