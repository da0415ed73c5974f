"""A throwaway L2 network of network namespaces, for tests that need several hosts.

Not a test module. Usage (from a trio test)::

    async with netns_network(4, rate_bit=100_000_000) as net:
        a, b = net.hosts[0], net.hosts[1]
        server = await net.start(a, sys.executable, "-m", "http.server", "--bind", a.ip)
        result = await net.run(b, "ping", "-c1", a.ip)

Topology: a "switch" namespace holds a bridge (``br0``, multicast snooping off, so mDNS floods to
every port) and one veth per host; host ``i`` is its own namespace whose ``eth0`` is the other end,
addressed ``198.18.X.(10+i)/24`` (``X`` from the PID and a counter). Nothing is created in the
caller's namespace, so no traffic can leave the namespaces made here. IPv6 is disabled inside them.
Optional ``tbf`` shaping applies ``rate_bit`` on both directions of each host's link. Every host
has a permanent neighbour entry for every other (no ARP: a shaped queue would drop it).

Teardown always runs (also on failure or cancellation): processes started through the network are
killed by PID and reaped, any other process left in its namespaces is killed, and the namespaces
are deleted (which removes the veths and the bridge). Namespaces left by a runner that was killed
outright (named ``p2pt<pid>-...`` with that PID gone) are swept at the next start.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, Any

import pytest
import trio

PREFIX = "p2pt"
SUBNET_FIRST = "198.18"
HOST_OFFSET = 10
KILL_WAIT = 5.0
STALE_AGE = 600.0  # seconds

_counter = itertools.count()


class NetnsError(RuntimeError):
    """A command building or using the test network failed."""


@dataclass(frozen=True, slots=True)
class Host:
    index: int
    netns: str
    ip: str
    dev: str = "eth0"


@dataclass(slots=True)
class Network:
    name: str  # the unique prefix of every namespace
    switch: str  # the namespace holding the bridge
    hosts: list[Host]
    processes: list[trio.Process] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return [self.switch, *(host.netns for host in self.hosts)]

    async def start(
        self,
        host: Host,
        *argv: str,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = None,
        cwd: str | None = None,
        stdin: int | IO[Any] | None = None,
    ) -> trio.Process:
        """Start ``argv`` inside ``host``'s namespace; it is killed at teardown if still running."""
        process = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", host.netns, *argv],
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
        )
        self.processes.append(process)
        return process

    async def run(
        self, host: Host, *argv: str, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion inside ``host``'s namespace, capturing its output."""
        return await _run("ip", "netns", "exec", host.netns, *argv, check=check)


def netns_missing() -> str | None:
    """Why namespaces cannot be built here, or None if they (probably) can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


@asynccontextmanager
async def netns_network(
    count: int,
    *,
    rate_bit: int | None = None,
    latency: str = "50ms",
) -> AsyncIterator[Network]:
    """``count`` hosts on one bridge; skips the test when namespaces are unavailable."""
    reason = netns_missing()
    if reason is not None:
        pytest.skip(reason)
    if not 0 < count <= 200:
        raise ValueError("between 1 and 200 hosts")
    _sweep_stale()
    serial = next(_counter)
    name = f"{PREFIX}{os.getpid()}-{serial}"
    third = (os.getpid() + serial) % 256
    net = Network(
        name=name,
        switch=f"{name}-sw",
        hosts=[
            Host(i, f"{name}-h{i}", f"{SUBNET_FIRST}.{third}.{HOST_OFFSET + i}")
            for i in range(count)
        ],
    )
    try:
        first = await _run("ip", "netns", "add", net.switch, check=False)
        if first.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {first.stderr.decode().strip()}")
        await _build(net, rate_bit=rate_bit, latency=latency)
        yield net
    finally:
        with trio.CancelScope(shield=True):
            await _stop_processes(net.processes)
        _delete_namespaces(net.namespaces)


async def _build(net: Network, *, rate_bit: int | None, latency: str) -> None:
    sw = net.switch
    await _ns_setup(sw)
    await _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    await _run("ip", "-n", sw, "link", "set", "br0", "up")
    for host in net.hosts:
        await _run("ip", "netns", "add", host.netns)
        await _ns_setup(host.netns)
        port = f"v{host.index}"
        await _run(
            "ip", "-n", sw, "link", "add", port, "type", "veth",
            "peer", "name", host.dev, "netns", host.netns,
        )  # fmt: skip
        await _run("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
        await _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.dev)
        await _run("ip", "-n", host.netns, "link", "set", host.dev, "up")
        if rate_bit is not None:
            await _shape(host.netns, host.dev, rate_bit=rate_bit, latency=latency)
            await _shape(sw, port, rate_bit=rate_bit, latency=latency)
    await _static_neighbours(net)


async def _static_neighbours(net: Network) -> None:
    """Every host knows every other host's MAC address from the start. A shaped port's full
    queue drops ARP like any other frame, and a host whose neighbour entry fails answers its
    own connects "No route to host": a failure of the test bench, not of what runs on it."""
    macs = {}
    for host in net.hosts:
        shown = await _run("ip", "-n", host.netns, "-j", "link", "show", host.dev)
        macs[host.ip] = json.loads(shown.stdout)[0]["address"]
    for host in net.hosts:
        lines = [
            f"neigh replace {ip} lladdr {mac} dev {host.dev} nud permanent\n"
            for ip, mac in macs.items()
            if ip != host.ip
        ]
        if lines:
            await _run_batch(host.netns, "".join(lines))


async def _run_batch(netns: str, commands: str) -> None:
    result = await trio.run_process(
        ["ip", "-n", netns, "-batch", "-"],
        stdin=commands.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        raise NetnsError(f"ip -n {netns} -batch -> {result.returncode}: {result.stderr.decode()}")


async def _ns_setup(netns: str) -> None:
    await _run(
        "ip", "netns", "exec", netns, "sysctl", "-q", "-w",
        "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
    )  # fmt: skip
    await _run("ip", "-n", netns, "link", "set", "lo", "up")


async def reshape(net: Network, host: Host, *, rate_bit: int, latency: str = "50ms") -> None:
    """Shape ``host``'s link to ``rate_bit`` both ways (its end and the bridge's port), in place
    of what ``netns_network`` set."""
    for netns, dev in ((host.netns, host.dev), (net.switch, f"v{host.index}")):
        await _shape(netns, dev, rate_bit=rate_bit, latency=latency, verb="replace")


async def _shape(netns: str, dev: str, *, rate_bit: int, latency: str, verb: str = "add") -> None:
    burst = max(rate_bit // 8 // 100, 16_000)  # 10 ms worth of bytes, at least a few packets
    await _run(
        "tc", "-n", netns, "qdisc", verb, "dev", dev, "root", "tbf",
        "rate", f"{rate_bit}bit", "burst", str(burst), "latency", latency,
    )  # fmt: skip


async def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = await trio.run_process(
        list(argv), capture_stdout=True, capture_stderr=True, check=False
    )
    if check and result.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} -> {result.returncode}: {result.stderr.decode().strip()}"
        )
    return result


async def _stop_processes(processes: Sequence[trio.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()  # SIGKILL by PID
    for process in processes:
        with trio.move_on_after(KILL_WAIT):
            await process.wait()


def _delete_namespaces(namespaces: Sequence[str]) -> None:
    """Kill whatever still runs in them (by PID), then delete them. Never raises."""
    for netns in namespaces:
        pids = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in pids:
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for netns in namespaces:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def _sweep_stale() -> None:
    """Delete namespaces of this harness whose creating process no longer exists (and that are
    old enough not to belong to a runner in another PID namespace that just made them)."""
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    stale = []
    for line in listing.splitlines():
        match = re.match(rf"({PREFIX}(\d+)-\d+-\w+)\b", line)
        if match and not _pid_alive(int(match.group(2))) and _age(match.group(1)) > STALE_AGE:
            stale.append(match.group(1))
    _delete_namespaces(stale)


def _age(netns: str) -> float:
    try:
        return time.time() - os.stat(f"/run/netns/{netns}").st_mtime
    except OSError:
        return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def read_json_line(process: trio.Process) -> dict[str, Any]:
    """The first line a process prints on stdout, parsed as a JSON object."""
    assert process.stdout is not None
    buffer = b""
    while b"\n" not in buffer:
        data = await process.stdout.receive_some()
        if not data:
            raise NetnsError(f"process exited before its JSON line: {buffer!r}")
        buffer += data
    return dict(json.loads(buffer.split(b"\n", 1)[0]))


async def iface_counters(net: Network, host: Host) -> tuple[int, int]:
    """(tx_bytes, tx_packets) of ``host``'s interface, read inside its namespace."""
    stats = f"/sys/class/net/{host.dev}/statistics"
    out = await net.run(host, "cat", f"{stats}/tx_bytes", f"{stats}/tx_packets")
    tx_bytes, tx_packets = out.stdout.split()
    return int(tx_bytes), int(tx_packets)
