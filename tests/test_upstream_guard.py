"""The upstream address policy: which addresses the agent contacts for a client (pure), and the
guarded transport that applies it when connecting (loopback listeners this test starts; other
addresses only through a fake resolver and a recording backend, never dialled)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import httpcore
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_agent_config
from agent.service import Agent
from p2pull.errors import UpstreamRefused
from p2pull.testing.origin import TestOrigin
from p2pull.upstream.addresses import REASONS, AddressPolicy, address_refusal
from p2pull.upstream.endpoints import listed_origins
from p2pull.upstream.guard import GuardedBackend, guarded_transport
from tests.listeners import Listener

DEADLINE = 10
LIMITS = httpx.Limits(max_connections=4)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        pytest.param("127.0.0.1", "loopback", id="loopback"),
        pytest.param("127.255.0.9", "loopback", id="loopback-8"),
        pytest.param("::1", "loopback", id="ipv6-loopback"),
        pytest.param("169.254.169.254", "metadata", id="metadata"),
        pytest.param("169.254.3.4", "link_local", id="link-local"),
        pytest.param("fe80::1", "link_local", id="ipv6-link-local"),
        pytest.param("fd00:ec2::254", "metadata", id="aws-ipv6-metadata"),
        pytest.param("100.100.100.200", "metadata", id="alibaba-metadata"),
        pytest.param("0.0.0.0", "unspecified", id="unspecified"),
        pytest.param("0.1.2.3", "unspecified", id="this-network"),
        pytest.param("::", "unspecified", id="ipv6-unspecified"),
        pytest.param("224.0.0.251", "multicast", id="multicast"),
        pytest.param("ff02::fb", "multicast", id="ipv6-multicast"),
        pytest.param("240.0.0.1", "reserved", id="class-e"),
        pytest.param("255.255.255.255", "reserved", id="broadcast"),
        pytest.param("::ffff:127.0.0.1", "loopback", id="mapped-loopback"),
        pytest.param("::ffff:169.254.169.254", "metadata", id="mapped-metadata"),
        pytest.param("64:ff9b::7f00:1", "loopback", id="nat64-loopback"),
        pytest.param("2002:a9fe:a9fe::", "metadata", id="6to4-metadata"),
        pytest.param("::7f00:1", "reserved", id="ipv4-compatible"),
        pytest.param("10.0.0.1", None, id="private-10"),
        pytest.param("172.16.5.4", None, id="private-172"),
        pytest.param("192.168.1.1", None, id="private-192"),
        pytest.param("100.64.0.1", None, id="shared-cgnat"),
        pytest.param("fd12:3456::1", None, id="ula"),
        pytest.param("8.8.8.8", None, id="public"),
        pytest.param("2606:4700::1111", None, id="ipv6-public"),
        pytest.param("64:ff9b::808:808", None, id="nat64-public"),
        pytest.param("::ffff:10.1.2.3", None, id="mapped-private"),
    ],
)
def test_address_refusal(address: str, reason: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("port", "addresses", "reason"),
    [
        pytest.param(443, ["10.0.0.5"], None, id="private"),
        pytest.param(443, ["203.0.113.9", "127.0.0.1"], "loopback", id="one-bad-refuses-all"),
        pytest.param(443, ["fe80::1%eth0"], "link_local", id="scoped"),
        pytest.param(443, ["not-an-ip"], "reserved", id="garbage"),
        pytest.param(0, ["10.0.0.5"], "port", id="port-0"),
        pytest.param(99999, ["10.0.0.5"], "port", id="port-99999"),
    ],
)
def test_policy_refusal(port: int, addresses: list[str], reason: str | None) -> None:
    assert AddressPolicy().refusal(port, addresses) == reason


def test_listed_origins_are_trusted_on_their_port_only() -> None:
    policy = AddressPolicy.trusting(
        listed_origins(
            {"local:5000": "http://127.0.0.1:5000", "v6": "http://[::1]:5001"},
            "https://Registry.Example",
        )
    )
    assert policy.is_trusted("127.0.0.1", 5000) and policy.is_trusted("::1", 5001)
    assert policy.is_trusted("[::1]", 5001) and policy.is_trusted("registry.example", 443)
    assert not policy.is_trusted("127.0.0.1", 5001) and not policy.is_trusted("localhost", 5000)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.ip_addresses())
def test_every_address_gets_an_answer_in_the_reasons(address: ipaddress._BaseAddress) -> None:
    reason = address_refusal(address)  # type: ignore[arg-type]
    assert reason is None or reason in REASONS
    if address.is_loopback or address.is_link_local or address.is_multicast:
        assert reason is not None


# -- the guarded transport, connecting ----------------------------------------------------------


def client(policy: AddressPolicy, refused: list[str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=guarded_transport(policy, limits=LIMITS, on_refused=refused.append)
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_unlisted_loopback_is_refused_before_connecting(host: str) -> None:
    listener, refused = Listener(), []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            async with client(AddressPolicy(), refused) as http:
                with pytest.raises(UpstreamRefused):
                    await http.get(f"http://{host}:{listener.port}/v2/")
                with pytest.raises(UpstreamRefused):  # closed or open, the same answer
                    await http.get(f"http://{host}:1/v2/")
            nursery.cancel_scope.cancel()
    assert listener.accepted == 0
    assert refused == ["loopback", "loopback"]


async def test_a_listed_loopback_registry_is_reached() -> None:
    listener, refused = Listener(), []
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            policy = AddressPolicy.trusting([("127.0.0.1", listener.port)])
            async with client(policy, refused) as http:
                response = await http.get(f"http://127.0.0.1:{listener.port}/v2/")
                with pytest.raises(UpstreamRefused):  # trusted on its port, not its host
                    await http.get(f"http://127.0.0.1:{listener.port + 1}/v2/")
            nursery.cancel_scope.cancel()
    assert response.status_code == 200 and listener.accepted == 1


class RecordingBackend(httpcore.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dialled.append((host, port))
        await trio.lowlevel.checkpoint()
        raise httpcore.ConnectError("recorded, not dialled")


def fake_resolver(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        return answers[host]

    return resolve


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        pytest.param(["203.0.113.7", "127.0.0.1"], "loopback", id="rebinding-mixed"),
        pytest.param(["169.254.169.254"], "metadata", id="metadata"),
        pytest.param(["fe80::1"], "link_local", id="link-local"),
    ],
)
async def test_a_name_is_checked_by_every_address_it_resolves_to(
    answers: list[str], reason: str
) -> None:
    inner, refused = RecordingBackend(), []
    backend = GuardedBackend(
        AddressPolicy(),
        on_refused=refused.append,
        inner=inner,
        resolve=fake_resolver({"registry.test": answers}),
    )
    with trio.fail_after(DEADLINE), pytest.raises(UpstreamRefused):
        await backend.connect_tcp("registry.test", 443, timeout=5)
    assert inner.dialled == [] and refused == [reason]


async def test_the_connection_goes_to_the_checked_addresses_not_the_name() -> None:
    """A second lookup could answer differently (DNS rebinding): the backend dials the
    addresses it checked, each in turn (happy eyeballs) until one connects."""
    inner = RecordingBackend()
    backend = GuardedBackend(
        AddressPolicy(),
        inner=inner,
        resolve=fake_resolver({"registry.test": ["10.9.8.7", "fd12::7"]}),
    )
    with trio.fail_after(DEADLINE), pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("registry.test", 443, timeout=5)
    assert inner.dialled == [("10.9.8.7", 443), ("fd12::7", 443)]


async def test_unix_sockets_are_refused() -> None:
    with trio.fail_after(DEADLINE), pytest.raises(UpstreamRefused):
        await GuardedBackend(AddressPolicy()).connect_unix_socket("/run/docker.sock")


# -- a real agent with the default policy ---------------------------------------------------------

NAME = "team/app"


@asynccontextmanager
async def agent_with(tmp_path: Path, *argv: str) -> AsyncIterator[str]:
    config = load_agent_config(
        [
            "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "store"), "--log-format", "text", "--standalone",
            "--check-containerd", "off", *argv,
        ],
        env={},
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(Agent(config).run)
        yield f"http://127.0.0.1:{ports.mirror}"
        nursery.cancel_scope.cancel()


async def test_a_clients_ns_cannot_make_the_agent_dial_loopback_or_metadata(
    tmp_path: Path,
) -> None:
    """With the default policy the agent sent TLS ClientHellos to a loopback listener, tried
    [::1], ports 0 and 99999 and a metadata address, and its errors told open ports from
    closed ones. Now: a 404 before any connection, the same for an open and a closed port.
    (Metadata and link-local addresses are checked above through a fake resolver: a test
    never dials them, even if the guard broke.)"""
    listener = Listener()
    digest = "sha256:" + "ab" * 32
    with socket.socket() as closed, trio.fail_after(DEADLINE * 3):
        closed.bind(("127.0.0.1", 0))  # bound, not listening: a closed port of this test's own
        closed_port = closed.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            async with agent_with(tmp_path) as mirror, httpx.AsyncClient(timeout=20) as http:
                answers, bodies = {}, {}
                for ns in (
                    f"127.0.0.1:{listener.port}",
                    f"127.0.0.1:{closed_port}",
                    f"localhost:{listener.port}",
                    f"[::ffff:127.0.0.1]:{listener.port}",
                    f"0.0.0.0:{listener.port}",  # Linux dials the local host
                ):
                    started = trio.current_time()
                    response = await http.get(
                        f"{mirror}/v2/{NAME}/blobs/{digest}", params={"ns": ns}
                    )
                    answers[ns] = (response.status_code, response.json()["errors"][0]["code"])
                    bodies[ns] = response.content
                    assert trio.current_time() - started < 2, ns  # no connect, no retries
                bad_ports = [
                    (await http.get(f"{mirror}/v2/{NAME}/blobs/{digest}", params={"ns": ns}))
                    for ns in ("127.0.0.1:0", "127.0.0.1:99999")
                ]
            nursery.cancel_scope.cancel()
    assert listener.accepted == 0
    assert set(answers.values()) == {(404, "NAME_UNKNOWN")}, answers
    assert bodies[f"127.0.0.1:{listener.port}"] == bodies[f"127.0.0.1:{closed_port}"]
    assert [r.status_code for r in bad_ports] == [400, 400]


async def test_listed_registries_stay_reachable_and_their_redirects_are_checked(
    tmp_path: Path,
) -> None:
    origin = TestOrigin()
    data = b"layer bytes " * 1000
    with trio.fail_after(DEADLINE * 3):
        async with trio.open_nursery() as nursery:
            await nursery.start(origin.run)
            digest = origin.add_blob(NAME, data)
            async with (
                agent_with(tmp_path, "--upstream", f"{origin.netloc}={origin.url}") as mirror,
                httpx.AsyncClient(timeout=20) as http,
            ):
                url = f"{mirror}/v2/{NAME}/blobs/{digest}"
                served = await http.get(url, params={"ns": origin.netloc})
                origin.redirect_blobs = True  # to its CDN: another loopback port, not listed
                other = origin.add_blob(NAME, b"other bytes " * 1000)
                redirected = await http.get(
                    f"{mirror}/v2/{NAME}/blobs/{other}", params={"ns": origin.netloc}
                )
            nursery.cancel_scope.cancel()
    assert served.status_code == 200 and served.content == data
    assert redirected.status_code == 404, redirected.text
    assert origin.count(listener="cdn") == 0
