"""Discovery sources: static list, DNS A records (injected resolver), mDNS across namespaces."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from zeroconf import ServiceInfo

from p2pull.discovery import Discovery, DiscoveryError
from p2pull.discovery.dns import DnsDiscovery, resolve_ipv4
from p2pull.discovery.mdns import (
    SERVICE_TYPE,
    MdnsDiscovery,
    instance_name,
    member_from_info,
    service_info,
)
from p2pull.discovery.static import StaticDiscovery, parse_peers, run_static
from p2pull.errors import P2pullError
from p2pull.membership import InvalidPeerAddress, Member, Membership
from tests.netns import Host, Network, netns_network

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(ROOT / "tests" / "discovery_probe.py")
SELF = Member.of("198.18.0.1", 5051)


def m(last: int, port: int = 5051) -> Member:
    return Member.of(f"198.18.0.{last}", port)


# -- static --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("198.18.0.2:5051", ["198.18.0.2:5051"]),
        ("198.18.0.2:5051,198.18.0.3:5052", ["198.18.0.2:5051", "198.18.0.3:5052"]),
        (" 198.18.0.2:1 , 198.18.0.3:2 ,", ["198.18.0.2:1", "198.18.0.3:2"]),
        ("198.18.0.2:1\n198.18.0.3:2", ["198.18.0.2:1", "198.18.0.3:2"]),
        ("198.18.0.2:1,198.18.0.2:1", ["198.18.0.2:1"]),
        ("[fd00::1]:5051,127.0.0.1:9", ["[fd00::1]:5051", "127.0.0.1:9"]),
    ],
    ids=["empty", "one", "two", "spaces-trailing-comma", "newlines", "duplicate", "ipv6"],
)
def test_parse_peers(text: str, expected: list[str]) -> None:
    assert [member.node_id for member in parse_peers(text)] == expected


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        ("198.18.0.2", "198.18.0.2"),
        ("198.18.0.2:5051,node-b:5051", "node-b:5051"),
        ("198.18.0.2:5051;198.18.0.3:5051", "198.18.0.2:5051;198.18.0.3:5051"),
        ("198.18.0.2:99999", "198.18.0.2:99999"),
        ("fd00::1:5051", "fd00::1:5051"),
    ],
    ids=["no-port", "hostname", "semicolon", "port-range", "ipv6-unbracketed"],
)
def test_parse_peers_rejects_with_the_culprit(text: str, culprit: str) -> None:
    with pytest.raises(InvalidPeerAddress, match=culprit) as caught:
        parse_peers(text)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, P2pullError)


async def test_run_static_publishes_then_withdraws() -> None:
    membership = Membership(self_member=SELF)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_static, membership, [m(2), m(3)])
        assert membership.live(now=trio.current_time()) == [SELF, m(2), m(3)]
        await nursery.start(StaticDiscovery(membership, [m(4)]).run)  # same source: replaces
        assert membership.live(now=trio.current_time()) == [SELF, m(4)]
        nursery.cancel_scope.cancel()
    assert membership.live(now=trio.current_time()) == [SELF]


# -- DNS -----------------------------------------------------------------------------------------


class ScriptedResolver:
    """Answers from a script: a list of IPs, an exception to raise, or "hang"."""

    def __init__(self, script: Sequence[list[str] | Exception | str]) -> None:
        self.script = list(script)
        self.names: list[str] = []

    async def __call__(self, name: str) -> list[str]:
        self.names.append(name)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        if answer == "hang":
            await trio.sleep_forever()
        assert isinstance(answer, list)
        return answer


# -- every in-process Discovery: the same contract ---------------------------------------------


def _static(membership: Membership) -> Discovery:
    return StaticDiscovery(membership, [m(2), m(3)])


def _dns(membership: Membership) -> Discovery:
    return DnsDiscovery(
        "svc", 5051, membership, resolve=ScriptedResolver([["198.18.0.2", "198.18.0.3"]])
    )


@pytest.mark.parametrize("make", [_static, _dns], ids=["static", "dns"])
async def test_discovery_conformance(
    make: Callable[[Membership], Discovery], autojump_clock: trio.testing.MockClock
) -> None:
    """Publishes its first view under its own source name before ``started``, keeps it, and
    withdraws it when cancelled, leaving other sources alone."""
    membership = Membership(self_member=SELF)
    membership.update_source("other", [m(9)], now=0)
    discovery = make(membership)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        assert membership.sources()[discovery.source] == [m(2), m(3)]
        await trio.sleep(60)
        assert membership.live(now=trio.current_time()) == [SELF, m(2), m(3), m(9)]
        nursery.cancel_scope.cancel()
    assert membership.sources() == {"other": [m(9)]}


async def test_dns_failed_or_empty_answers_keep_the_last_view(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pull.discovery.dns")
    membership = Membership(self_member=SELF)
    resolver = ScriptedResolver(
        [
            ["198.18.0.2", "198.18.0.3", "198.18.0.1"],
            OSError("server failure"),
            [],
            "hang",
            DiscoveryError("NXDOMAIN"),
            ["198.18.0.4"],
        ]
    )
    dns = DnsDiscovery("p2pull.kube-system.svc", 5051, membership, timeout=2.0, resolve=resolver)
    views = []
    for _ in range(6):
        await dns.refresh()
        views.append([member.node_id for member in membership.live(now=trio.current_time())])
    three = ["198.18.0.1:5051", "198.18.0.2:5051", "198.18.0.3:5051"]
    assert views == [three, three, three, three, three, ["198.18.0.1:5051", "198.18.0.4:5051"]]
    assert set(resolver.names) == {"p2pull.kube-system.svc"}
    assert "failed (server failure, 1 in a row); keeping the last view of 3 members" in caplog.text
    assert "failed (timed out after 2.0s, 3 in a row)" not in caplog.text  # logged at debug
    assert "recovered after 4 failures" in caplog.text


async def test_dns_run_resolves_every_interval_and_withdraws_when_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    membership = Membership(self_member=SELF)
    resolver = ScriptedResolver([["198.18.0.2"], ["198.18.0.2", "198.18.0.3"], ["198.18.0.3"]])
    dns = DnsDiscovery("svc", 5051, membership, interval=5.0, resolve=resolver)
    views = []
    async with trio.open_nursery() as nursery:
        await nursery.start(dns.run)
        await trio.sleep(2.5)
        for _ in range(3):
            views.append(membership.live(now=trio.current_time()))
            await trio.sleep(dns.interval)
        nursery.cancel_scope.cancel()
    assert views == [[SELF, m(2)], [SELF, m(2), m(3)], [SELF, m(3)]]
    assert membership.live(now=trio.current_time()) == [SELF]


async def test_dns_first_failure_does_not_block_the_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    membership = Membership(self_member=SELF)
    dns = DnsDiscovery("svc", 5051, membership, timeout=2.0, resolve=ScriptedResolver(["hang"]))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(2.5):
            await nursery.start(dns.run)
        assert dns.failures == 1
        assert membership.live(now=trio.current_time()) == [SELF]
        nursery.cancel_scope.cancel()


async def test_resolve_ipv4_with_numeric_host_and_translated_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await resolve_ipv4("127.0.0.1") == ["127.0.0.1"]  # numeric: no query leaves the box

    async def failing(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(trio.socket, "getaddrinfo", failing)
    with pytest.raises(DiscoveryError, match="cannot resolve 'svc'"):
        await resolve_ipv4("svc")


def test_dns_rejects_bad_configuration() -> None:
    membership = Membership(self_member=SELF)
    with pytest.raises(DiscoveryError):
        DnsDiscovery("", 5051, membership)
    with pytest.raises(DiscoveryError):
        DnsDiscovery("svc", 5051, membership, interval=0)


# -- mDNS: pure parts ------------------------------------------------------------------------------


def test_service_info_round_trips_to_the_member() -> None:
    info = service_info(m(7))
    assert (
        info.name == instance_name("198.18.0.7", 5051) == f"p2pull-198-18-0-7-5051.{SERVICE_TYPE}"
    )
    assert info.decoded_properties == {"node_id": "198.18.0.7:5051", "port": "5051", "version": "1"}
    assert member_from_info(info) == m(7)


def _info(addresses: list[str], *, port: int = 5051, **txt: str) -> ServiceInfo:
    return ServiceInfo(
        SERVICE_TYPE,
        f"x.{SERVICE_TYPE}",
        port=port,
        properties=txt,
        server="x.local.",
        addresses=[socket.inet_aton(address) for address in addresses],
    )


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (_info(["198.18.0.3", "198.18.0.2"], node_id="198.18.0.3:5051"), m(3)),
        (_info(["198.18.0.3", "198.18.0.2"]), m(2)),
        (_info(["198.18.0.3", "198.18.0.2"], node_id="198.18.0.9:5051"), m(2)),
        (_info(["198.18.0.3"], version="2"), None),
        (_info([]), None),
    ],
    ids=["txt-picks-address", "no-txt-lowest", "txt-foreign-ignored", "future-version", "no-ip"],
)
def test_member_from_info(info: ServiceInfo, expected: Member | None) -> None:
    assert member_from_info(info) == expected


def test_mdns_needs_an_ipv4_host() -> None:
    membership = Membership(self_member=SELF)
    with pytest.raises(DiscoveryError):
        MdnsDiscovery(membership, host="fd00::1", port=5051)
    with pytest.raises(DiscoveryError):
        MdnsDiscovery(membership, host="node-a", port=5051)
    assert MdnsDiscovery(membership, host="198.18.0.1", port=5051).interfaces == ["198.18.0.1"]


# -- mDNS: real zeroconf in network namespaces ----------------------------------------------------


class Probes:
    """``discovery_probe.py`` processes, one per (host, address, port), and their latest views."""

    def __init__(self, net: Network, logdir: Path) -> None:
        self.net = net
        self.logdir = logdir
        self.processes: list[trio.Process] = []
        self.views: list[set[str]] = []
        self.node_ids: list[str] = []
        self._changed = trio.Event()

    async def start(
        self, nursery: trio.Nursery, host: Host, *, ip: str, port: int, expect: int
    ) -> None:
        index = len(self.processes)
        log = (self.logdir / f"probe{index}.log").open("wb")
        process = await self.net.start(
            host, sys.executable, PROBE, "--host", ip, "--port", str(port),
            "--expect", str(expect), "--timeout", "20", "--stay", "--lifetime", "60",
            stderr=log, cwd=str(ROOT),
        )  # fmt: skip
        log.close()
        self.processes.append(process)
        self.views.append(set())
        self.node_ids.append(Member.of(ip, port).node_id)
        nursery.start_soon(self._read, index, process)

    async def _read(self, index: int, process: trio.Process) -> None:
        assert process.stdout is not None
        buffer = b""
        async for data in process.stdout:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                if event["event"] == "view":
                    self.views[index] = set(event["live"])
                    self._changed.set()
                    self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    @contextlib.contextmanager
    def explain(self, what: str) -> Iterator[None]:
        """Turn a timeout inside into a failure that shows every probe's view and log."""
        try:
            yield
        except trio.TooSlowError:
            logs = "\n".join(
                f"--- probe {i}: {path.read_text()[-2000:]}"
                for i, path in enumerate(sorted(self.logdir.glob("probe*.log")))
            )
            pytest.fail(f"timed out waiting for {what}; views {self.views}\n{logs}")

    def all_see(self, indexes: Sequence[int]) -> bool:
        wanted = {self.node_ids[i] for i in indexes}
        return all(self.views[i] == wanted for i in indexes)


async def test_mdns_four_namespaces_find_each_other_and_drop_a_clean_leaver() -> None:
    with trio.fail_after(50), tempfile.TemporaryDirectory(prefix="p2pull-mdns-") as logdir:
        async with netns_network(4) as net, trio.open_nursery() as nursery:
            probes = Probes(net, Path(logdir))
            started = time.monotonic()
            for host in net.hosts:
                await probes.start(nursery, host, ip=host.ip, port=5051, expect=4)
            everyone = range(4)
            with probes.explain("all four seeing all four"), trio.fail_after(20):
                await probes.wait_until(lambda: probes.all_see(everyone))
            converged = time.monotonic() - started

            leaver = probes.processes[3]
            leaver.send_signal(signal.SIGTERM)
            left = time.monotonic()
            with trio.fail_after(5):
                assert await leaver.wait() == 0  # unregistered (goodbye sent) and exited cleanly
            with probes.explain("the other three dropping it"), trio.fail_after(15):
                await probes.wait_until(lambda: probes.all_see(range(3)))
            dropped = time.monotonic() - left
            nursery.cancel_scope.cancel()
    print(f"mDNS in namespaces: converged in {converged:.2f}s, leaver dropped in {dropped:.2f}s")


def _lo_multicast_works(net: Network, host: Host) -> bool:
    code = (
        "import socket,struct\n"
        "r=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);r.bind(('',0));r.settimeout(2)\n"
        "g=socket.inet_aton('239.255.0.1')+socket.inet_aton('127.0.0.1')\n"
        "r.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,g)\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton('127.0.0.1'))\n"
        "s.sendto(b'x',('239.255.0.1',r.getsockname()[1]));r.recv(1)\n"
    )
    return (
        subprocess.run(
            ["ip", "netns", "exec", host.netns, sys.executable, "-c", code],
            capture_output=True,
            check=False,
            timeout=10,
        ).returncode
        == 0
    )


async def test_mdns_loopback_smoke() -> None:
    """Two nodes on 127.0.0.1 (different ports) inside a namespace that has only ``lo``."""
    with trio.fail_after(30), tempfile.TemporaryDirectory(prefix="p2pull-mdns-lo-") as logdir:
        async with netns_network(1) as net, trio.open_nursery() as nursery:
            host = net.hosts[0]
            if not await trio.to_thread.run_sync(_lo_multicast_works, net, host):
                pytest.skip("multicast on the loopback interface does not work here")
            probes = Probes(net, Path(logdir))
            for port in (40001, 40002):
                await probes.start(nursery, host, ip="127.0.0.1", port=port, expect=2)
            with probes.explain("both seeing both"), trio.fail_after(15):
                await probes.wait_until(lambda: probes.all_see(range(2)))
            nursery.cancel_scope.cancel()
