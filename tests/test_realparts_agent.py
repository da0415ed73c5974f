"""The agent between real clients and a real origin: the single-node mirror's acceptance tests.

Real docker-registry, skopeo, containerd and ctr (see tests/realparts.py); the agent runs in this
process (``Agent.run`` in a nursery) except in the test that runs ``p2pull agent`` as a process.
A proxy between the agent and the registry counts what the origin really sent. What these prove:

- containerd pulls and unpacks a multi-layer image through the agent, which stores every blob
  verified and fetches each from the origin exactly once;
- a second node-local pull costs the origin nothing by digest, and only a tag HEAD by tag;
- clients that send no ``ns`` (skopeo) are served through ``--default-upstream``;
- the real ``p2pull agent`` process starts, serves, stops cleanly on SIGTERM, and containerd falls
  back to the origin once it is gone;
- an agent restarted on the same data dir resumes a half-downloaded blob with a Range request for
  exactly the chunks it does not have.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentConfig, load_agent_config
from agent.service import Agent, AgentPorts
from p2pull.containerd import apply
from p2pull.reference import Digest
from p2pull.store.disk import DiskStore
from tests.realparts import (
    Containerd,
    CountingProxy,
    OciImage,
    Registry,
    Stack,
    free_port,
    http_status,
    make_oci_layout,
    open_stack,
    push_image,
    requested_urls,
    short_tmpdir,
)

pytestmark = pytest.mark.realparts

DEADLINE = 120
MiB = 1024 * 1024
LAYERS = [6 * MiB, 5 * MiB, 4 * MiB, 3 * MiB]  # incompressible: ~18 MiB on the wire
BIG_BLOB = 32 * MiB
REPO = "p2pull/acceptance"
TAG = "v1"
HEADERS_ALLOWANCE = 16 * 1024  # HTTP heads of the handful of upstream requests of one pull
TAG_HEAD_MAX = 4 * 1024  # a manifest HEAD by tag: request line, headers, no body
STOP_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def image() -> Iterator[OciImage]:
    with short_tmpdir("p2p-img-") as path:
        yield make_oci_layout(path / "layout", layers=LAYERS, seed=2, tag=TAG)


@pytest.fixture(scope="module")
def big_image() -> Iterator[OciImage]:
    with short_tmpdir("p2p-big-") as path:
        yield make_oci_layout(path / "layout", layers=[BIG_BLOB], seed=5, tag="big")


# --- helpers ----------------------------------------------------------------------------------


def _bare(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A lone failure reads better without the group around it."""
    return group.exceptions[0] if len(group.exceptions) == 1 else group


@contextlib.asynccontextmanager
async def background() -> AsyncIterator[trio.Nursery]:
    """A nursery whose tasks are cancelled when the block ends (registries, proxies, clients)."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _bare(group) from None


def agent_config(
    data_dir: Path,
    *,
    upstreams: Sequence[str] = (),
    default: str | None = None,
    chunk: str = "4MiB",
    extra: Sequence[str] = (),
) -> AgentConfig:
    """The config ``p2pull agent`` would build from these flags and ``extra`` (ports: any free
    one)."""
    argv = ["--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--standalone"]
    argv += ["--data-dir", str(data_dir), "--chunk-size", chunk, "--log-format", "text", *extra]
    for item in upstreams:
        argv += ["--upstream", item]
    if default is not None:
        argv += ["--default-upstream", default]
    return load_agent_config(argv, env={})


@dataclass(frozen=True)
class RunningAgent:
    agent: Agent
    ports: AgentPorts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mirror}"

    @property
    def store(self) -> DiskStore:
        assert self.agent.store is not None
        return self.agent.store

    def served(self, source: str) -> float:
        value = self.agent.metrics.registry.get_sample_value(
            "p2pull_served_bytes_total", {"source": source}
        )
        return value or 0.0


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[RunningAgent]:
    """An in-process agent, stopped (its nursery cancelled) when the block ends."""
    agent = Agent(config)
    try:
        async with trio.open_nursery() as nursery:
            ports = await nursery.start(agent.run)
            yield RunningAgent(agent, ports)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _bare(group) from None


def blob_sizes(image: OciImage) -> dict[str, int]:
    """Every blob of ``image`` (manifest, config, layers) and its size, from the layout."""
    blobs = image.layout / "blobs" / "sha256"
    digests = [image.manifest, image.config, *image.layers]
    return {d: (blobs / Digest.parse(d).hex).stat().st_size for d in digests}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MiB):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def assert_stored(store: DiskStore, data_dir: Path, sizes: dict[str, int]) -> None:
    """Each blob is complete in the store and its data file re-hashes to its digest."""
    for digest, size in sizes.items():
        blob = store.lookup(Digest.parse(digest))
        assert blob is not None, f"{digest} not in the agent's store"
        assert blob.complete and blob.size == size, (digest, blob.complete, blob.size, size)
        data = data_dir / "blobs" / "sha256" / Digest.parse(digest).hex / "data"
        assert file_sha256(data) == digest


async def pull_ok(containerd: Containerd, ref: str, hosts_dir: Path) -> list[str]:
    done = await containerd.pull(ref, hosts_dir=hosts_dir)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    assert await containerd.is_unpacked(ref)
    return requested_urls(done.stderr)


async def fresh_containerd(stack: Stack, workdir: Path) -> Containerd:
    """Another containerd with its own empty content store, stopped with the stack."""
    containerd = Containerd(workdir)
    await stack.nursery.start(containerd.run)
    return containerd


@contextlib.asynccontextmanager
async def image_behind_agent(
    workdir: Path, image: OciImage
) -> AsyncIterator[tuple[Stack, CountingProxy, RunningAgent, Path]]:
    """Registry with ``image`` pushed, a counting proxy in front of it, an agent using the proxy
    as upstream for the registry's ns, and hosts.toml: agent as mirror, registry as server."""
    async with open_stack(workdir) as stack:
        registry = stack.registry
        await push_image(image, f"{registry.host}/{REPO}:{TAG}")
        proxy = CountingProxy("127.0.0.1", registry.port)
        await stack.nursery.start(proxy.run)
        config = agent_config(workdir / "agent", upstreams=[f"{registry.host}=http://{proxy.host}"])
        async with running_agent(config) as agent:
            certs = workdir / "certs.d"
            apply(
                certs,
                registries=[registry.host],
                mirror_url=agent.url,
                server_urls={registry.host: registry.url},
            )
            yield stack, proxy, agent, certs


# --- 1 and 2: containerd pulls through the agent ----------------------------------------------


async def test_containerd_pulls_multi_layer_image_through_agent(
    workdir: Path, image: OciImage
) -> None:
    sizes = blob_sizes(image)
    with trio.fail_after(DEADLINE):
        async with image_behind_agent(workdir, image) as (stack, proxy, agent, certs):
            ref = f"{stack.registry.host}/{REPO}:{TAG}"
            urls = await pull_ok(stack.containerd, ref, certs)

            assert_stored(agent.store, workdir / "agent", sizes)
            served_origin = agent.served("origin")

    # ctr asked the agent for everything and never had to fall back to the registry
    assert urls and all(u.startswith(f"{agent.url}/v2/") for u in urls), urls
    # the origin sent the image exactly once: every blob, none of them twice
    assert image.total_size <= proxy.bytes_from_upstream
    assert proxy.bytes_from_upstream < 1.1 * image.total_size + HEADERS_ALLOWANCE
    blob_gets = [r for r in proxy.requests if "/blobs/" in r]
    assert sorted(r.split(" ")[1].rsplit("/", 1)[1] for r in blob_gets) == sorted(
        [image.config, *image.layers]
    )
    # containerd's blob bytes came from the agent, which got them from the origin just now
    assert served_origin == sizes[image.config] + sum(sizes[d] for d in image.layers)


async def test_second_pull_costs_the_origin_nothing_by_digest_and_a_head_by_tag(
    workdir: Path, image: OciImage
) -> None:
    blob_bytes = sum(size for d, size in blob_sizes(image).items() if d != image.manifest)
    with trio.fail_after(DEADLINE):
        async with image_behind_agent(workdir, image) as (stack, proxy, agent, certs):
            host = stack.registry.host
            await pull_ok(stack.containerd, f"{host}/{REPO}:{TAG}", certs)
            first_bytes, first_requests = proxy.bytes_from_upstream, list(proxy.requests)
            first_connections = proxy.connections

            by_digest = f"{host}/{REPO}@{image.manifest}"
            node2 = await fresh_containerd(stack, workdir / "node2")
            digest_urls = await pull_ok(node2, by_digest, certs)
            digest_bytes, digest_connections = proxy.bytes_from_upstream, proxy.connections
            digest_requests = list(proxy.requests)
            served_local_by_digest = agent.served("local")

            node3 = await fresh_containerd(stack, workdir / "node3")
            tag_urls = await pull_ok(node3, f"{host}/{REPO}:{TAG}", certs)
            served_local = agent.served("local")

    assert first_bytes >= image.total_size
    # by digest: nothing reaches the origin, not even a connection
    assert all(u.startswith(f"{agent.url}/v2/") for u in digest_urls), digest_urls
    assert digest_bytes == first_bytes
    assert digest_connections == first_connections
    assert digest_requests == first_requests
    assert served_local_by_digest == blob_bytes
    # by tag: only the tag HEAD goes upstream (tags move); manifest and blobs are local
    assert all(u.startswith(f"{agent.url}/v2/") for u in tag_urls), tag_urls
    assert proxy.requests[len(digest_requests) :] == [f"HEAD /v2/{REPO}/manifests/{TAG}"], (
        proxy.requests
    )
    assert proxy.bytes_from_upstream - digest_bytes < TAG_HEAD_MAX
    assert served_local == 2 * blob_bytes


# --- 3: a client without ns -------------------------------------------------------------------


async def test_skopeo_copies_through_agent_with_default_upstream(
    workdir: Path, image: OciImage
) -> None:
    with trio.fail_after(DEADLINE):
        async with background() as services:
            registry = Registry(workdir / "registry")
            await services.start(registry.run)
            await push_image(image, f"{registry.host}/{REPO}:{TAG}")
            config = agent_config(workdir / "agent", default=registry.url)
            async with running_agent(config) as agent:
                copy = ["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
                source = f"docker://127.0.0.1:{agent.ports.mirror}/{REPO}:{TAG}"
                dest = workdir / "copied"
                argv = ["skopeo", *copy, source, f"oci:{dest}:{TAG}"]
                done = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
                assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
                assert_stored(agent.store, workdir / "agent", blob_sizes(image))
                served = agent.served("origin") + agent.served("local")

    index = json.loads((dest / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest]
    blobs = dest / "blobs" / "sha256"
    manifest = json.loads((blobs / Digest.parse(image.manifest).hex).read_bytes())
    assert manifest["config"]["digest"] == image.config
    assert [layer["digest"] for layer in manifest["layers"]] == list(image.layers)
    for digest in [image.manifest, image.config, *image.layers]:
        assert file_sha256(blobs / Digest.parse(digest).hex) == digest
    assert served >= sum(size for d, size in blob_sizes(image).items() if d != image.manifest)


# --- 4: the agent as a real process -----------------------------------------------------------


def agent_command() -> list[str]:
    """The installed ``p2pull`` console script, or the module if it is not installed."""
    script = Path(sys.executable).with_name("p2pull")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


def scrape(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-30:])


async def test_agent_process_serves_then_stops_on_sigterm_and_containerd_falls_back(
    workdir: Path, image: OciImage
) -> None:
    mirror_port, metrics_port = free_port(), free_port()
    log = workdir / "agent.log"
    with trio.fail_after(DEADLINE):
        async with open_stack(workdir) as stack:
            registry = stack.registry
            ref = f"{registry.host}/{REPO}:{TAG}"
            await push_image(image, ref)
            argv = [*agent_command(), "agent", "--standalone"]
            argv += ["--mirror-addr", f"127.0.0.1:{mirror_port}"]
            argv += ["--metrics-addr", f"127.0.0.1:{metrics_port}"]
            argv += ["--data-dir", str(workdir / "agent"), "--log-format", "text"]
            argv += ["--upstream", f"{registry.host}={registry.url}"]
            with log.open("ab") as out:
                proc = await trio.lowlevel.open_process(argv, stdout=out, stderr=subprocess.STDOUT)
            try:
                with trio.fail_after(30):
                    while await http_status("127.0.0.1", metrics_port, "/readyz") != 200:
                        assert proc.returncode is None, f"agent exited:\n{_tail(log)}"
                        await trio.sleep(0.05)  # polling an external process
                agent_url = f"http://127.0.0.1:{mirror_port}"
                certs = workdir / "certs.d"
                apply(
                    certs,
                    registries=[registry.host],
                    mirror_url=agent_url,
                    server_urls={registry.host: registry.url},
                )

                served_urls = await pull_ok(stack.containerd, ref, certs)
                async with httpx.AsyncClient(trust_env=False) as http:
                    metrics = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
                served = scrape(metrics.text, "p2pull_served_bytes_total", {"source": "origin"})

                proc.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_TIMEOUT):
                    await proc.wait()
                assert proc.returncode == 0, f"agent did not exit 0 on SIGTERM:\n{_tail(log)}"

                node2 = await fresh_containerd(stack, workdir / "node2")
                fallback_urls = await pull_ok(node2, ref, certs)
            finally:
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:
                        proc.kill()
                    await proc.wait()

    assert served_urls and all(u.startswith(f"{agent_url}/v2/") for u in served_urls)
    blob_bytes = sum(size for d, size in blob_sizes(image).items() if d != image.manifest)
    assert served == blob_bytes
    # the dead agent is tried first, then containerd goes to the registry itself
    assert fallback_urls[0].startswith(f"{agent_url}/v2/{REPO}/manifests/{TAG}")
    assert any(u.startswith(f"{registry.url}/v2/{REPO}/blobs/") for u in fallback_urls)


# --- 5: restart mid-download ------------------------------------------------------------------


@dataclass
class ProxiedRequest:
    line: str
    headers: dict[str, str]


class CuttingProxy:
    """A TCP proxy to ``127.0.0.1:upstream_port`` that records every request head.

    With ``cut_after``, once that many bytes came from upstream it closes that connection
    mid-stream (``cut`` is set), then holds every new connection without forwarding it (``held``
    is set) until :meth:`resume`; held connections are dropped, never forwarded late.
    """

    def __init__(self, upstream_port: int, *, cut_after: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.port = 0
        self.bytes_from_upstream = 0
        self.connections = 0
        self.requests: list[ProxiedRequest] = []
        self.cut = trio.Event()
        self.held = trio.Event()
        self._resumed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def resume(self) -> None:
        self._resumed.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            if self.cut.is_set() and not self._resumed.is_set():
                self.held.set()
                await self._resumed.wait()
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._requests, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._responses, upstream, client, nursery.cancel_scope)

    async def _requests(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        pending = b""
        try:
            while data := await src.receive_some(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    line, *fields = head.decode("latin-1").split("\r\n")
                    headers = {}
                    for item in fields:
                        name, _, value = item.partition(":")
                        headers[name.strip().lower()] = value.strip()
                    self.requests.append(ProxiedRequest(line, headers))
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()

    async def _responses(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if self.cut_after is not None and not self.cut.is_set():
                    allowed = self.cut_after - self.bytes_from_upstream
                    if len(data) >= allowed:
                        self.bytes_from_upstream += allowed
                        await dst.send_all(data[:allowed])
                        self.cut.set()
                        scope.cancel()  # both sides closed: a body ending short of its length
                        return
                self.bytes_from_upstream += len(data)
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()


@dataclass
class Download:
    status: int | None = None
    received: int = 0
    sha256: str = ""
    error: Exception | None = None
    done: trio.Event = field(default_factory=trio.Event)


async def download(url: str, *, ns: str, into: Download) -> None:
    """GET a blob from the agent, hashing what arrives; a broken stream is recorded, not raised."""
    digest = hashlib.sha256()
    try:
        async with (
            httpx.AsyncClient(trust_env=False, timeout=30) as http,
            http.stream("GET", url, params={"ns": ns}) as response,
        ):
            into.status = response.status_code
            async for data in response.aiter_raw():
                digest.update(data)
                into.received += len(data)
    except httpx.TransportError as exc:
        into.error = exc
    finally:
        into.sha256 = f"sha256:{digest.hexdigest()}"
        into.done.set()


CHUNK = MiB
CUT_AFTER = 20 * MiB + 512 * 1024  # 20 whole chunks of body, whatever the response head's size


async def test_restarted_agent_resumes_partial_blob_with_range_request(
    workdir: Path, big_image: OciImage
) -> None:
    digest = big_image.layers[0]
    size = blob_sizes(big_image)[digest]
    data_dir = workdir / "agent"
    with trio.fail_after(DEADLINE):
        async with background() as services:
            registry = Registry(workdir / "registry")
            await services.start(registry.run)
            await push_image(big_image, f"{registry.host}/{REPO}:big")
            proxy = CuttingProxy(registry.port, cut_after=CUT_AFTER)
            await services.start(proxy.run)
            config = agent_config(
                data_dir,
                upstreams=[f"{registry.host}={proxy.url}"],
                chunk="1MiB",
                extra=["--min-chunks", "1"],  # chunks of exactly 1 MiB: CUT_AFTER counts them
            )
            path = f"/v2/{REPO}/blobs/{digest}"

            first = Download()
            async with running_agent(config) as agent1:
                get = functools.partial(download, agent1.url + path, ns=registry.host, into=first)
                services.start_soon(get)
                await proxy.cut.wait()
                await proxy.held.wait()  # the agent stored what it got and is retrying
                partial = agent1.store.lookup(Digest.parse(digest))
                assert partial is not None
                landed = partial.bitfield.count
                landed_prefix = partial.bitfield.first_missing()
            await first.done.wait()  # the agent is stopped: its client must see a broken body

            proxy.resume()
            upstream_before, requests_before = proxy.bytes_from_upstream, len(proxy.requests)
            async with running_agent(config) as agent2:
                loaded = agent2.store.lookup(Digest.parse(digest))
                assert loaded is not None and not loaded.complete
                loaded_count = loaded.bitfield.count
                loaded_first_missing = loaded.bitfield.first_missing()
                second = Download()
                await download(agent2.url + path, ns=registry.host, into=second)
                assert_stored(agent2.store, data_dir, {digest: size})

    # first run: the cut came mid-body; every whole chunk that arrived was stored, in order
    assert landed == CUT_AFTER // CHUNK and landed_prefix == landed
    assert first.status == 200 and first.error is not None, first
    assert first.received < size
    # restart: the store knows every chunk the first agent had stored
    assert (loaded_count, loaded_first_missing) == (landed, landed)
    # the new agent asked the origin for exactly the missing range, and got only that
    resumed = proxy.requests[requests_before:]
    assert [r.line for r in resumed] == [f"GET {path} HTTP/1.1"], resumed
    assert resumed[0].headers.get("range") == f"bytes={landed * CHUNK}-"
    missing = size - landed * CHUNK
    assert missing <= proxy.bytes_from_upstream - upstream_before < missing + TAG_HEAD_MAX
    # and the client got the whole blob, verified
    assert (second.status, second.error, second.received) == (200, None, size)
    assert second.sha256 == digest
