"""A real agent under hostile clients on its own ports (127.0.0.1): requests that once ended it,
and the flags that bound its HTTP servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

from agent.config import load_agent_config
from agent.service import Agent, AgentPorts

DEADLINE = 30


@asynccontextmanager
async def running_agent(tmp_path: Path, *argv: str) -> AsyncIterator[tuple[Agent, AgentPorts]]:
    config = load_agent_config(
        [
            "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "store"), "--log-format", "text", "--standalone",
            "--check-containerd", "off", *argv,
        ],
        env={},
    )  # fmt: skip
    agent = Agent(config)
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(agent.run)
        yield agent, ports
        nursery.cancel_scope.cancel()


async def raw(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    async with stream:
        await stream.send_all(data)
        with trio.move_on_after(2):
            while piece := await stream.receive_some(65536):
                received += piece
    return received


async def test_a_malformed_target_on_either_port_does_not_end_the_agent(tmp_path: Path) -> None:
    """``GET //[x`` made urlsplit raise outside any handler and ended the agent within ~3 s;
    the metrics port listens on 0.0.0.0 by default."""
    with trio.fail_after(DEADLINE):
        async with running_agent(tmp_path) as (_, ports):
            for port in (ports.mirror, ports.metrics):
                for target in (b"//[x", b"http://[x/", b"*"):
                    answer = await raw(
                        port,
                        b"GET " + target + b" HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
                    )
                    assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 200")), answer[:80]
            await trio.sleep(0.5)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{ports.metrics}/readyz")
                base = await client.get(f"http://127.0.0.1:{ports.mirror}/v2/")
                metrics = (await client.get(f"http://127.0.0.1:{ports.metrics}/metrics")).text
    assert ready.status_code == 200 and base.status_code == 200
    assert 'p2pull_http_refused_total{reason="bad_request",server="mirror"} 2.0' in metrics


async def test_the_connection_cap_flag_applies_to_the_mirror(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with running_agent(tmp_path, "--mirror-max-connections", "1") as (_, ports):
            held = await trio.open_tcp_stream("127.0.0.1", ports.mirror)
            async with held:
                await held.send_all(b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
                first = await held.receive_some(65536)
                while not first.endswith(b"{}"):
                    first += await held.receive_some(65536)
                # kept alive and idle: the next client takes its place at the cap of 1
                second = await raw(ports.mirror, b"GET /v2/ HTTP/1.1\r\nhost: a\r\n\r\n")
                assert await held.receive_some(65536) == b""  # closed
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{ports.metrics}/metrics")).text
    assert second.startswith(b"HTTP/1.1 200")
    assert 'p2pull_http_refused_total{reason="evicted",server="mirror"} 1.0' in metrics
