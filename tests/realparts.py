"""Helpers that drive the real Debian components: docker-registry, skopeo, containerd and ctr.

Not a test module. Long-lived processes are services in the trio style::

    async with trio.open_nursery() as nursery:
        registry = Registry(workdir / "registry"); await nursery.start(registry.run)
        ctrd = Containerd(workdir / "ctrd"); await nursery.start(ctrd.run)
        ...; nursery.cancel_scope.cancel()

Every process is terminated (then killed) and reaped when its ``run`` is cancelled or fails, and
a process that dies while it should be serving fails the test with the tail of its log.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.ports import free_port

BINARIES = ("containerd", "ctr", "docker-registry", "skopeo", "runc")
STARTUP_TIMEOUT = 30.0
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
STOP_GRACE = 5.0

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


class RealPartError(RuntimeError):
    """A real component failed to start, died, or a command it ran failed."""


def realparts_missing() -> str | None:
    """Why the real-parts tests cannot run here, or None if they can."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"missing binaries: {', '.join(missing)} (Debian: containerd docker-registry skopeo)"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


def require_realparts() -> None:
    """Skip the calling test when the real parts are unavailable.

    With ``P2PULL_REALPARTS=require`` (CI) the test fails instead, so a broken image cannot turn
    the acceptance tests into silent skips.
    """
    reason = realparts_missing()
    if reason is None:
        return
    if os.environ.get("P2PULL_REALPARTS") == "require":
        pytest.fail(f"real parts required but unavailable: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def short_tmpdir(prefix: str = "p2p-") -> Iterator[Path]:
    """A fresh directory with a short path (unix sockets need < 108 bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _stop(proc: trio.Process) -> None:
    """Terminate, then kill, and always reap."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def _serve_process(
    argv: Sequence[str],
    *,
    log: Path,
    ready: Callable[[], Awaitable[bool]],
    task_status: trio.TaskStatus[None],
) -> None:
    with log.open("ab") as out:
        proc = await trio.lowlevel.open_process(list(argv), stdout=out, stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(STARTUP_TIMEOUT):
            while not await ready():
                if proc.returncode is not None:
                    raise RealPartError(f"{argv[0]} exited at startup:\n{_log_tail(log)}")
                await trio.sleep(0.05)  # polling an external process: nothing to wait on
        task_status.started()
        await proc.wait()
        raise RealPartError(f"{argv[0]} exited ({proc.returncode}):\n{_log_tail(log)}")
    finally:
        with trio.CancelScope(shield=True):
            await _stop(proc)


async def http_status(host: str, port: int, target: str) -> int | None:
    """Status code of ``GET target`` (HTTP/1.0), or None if nothing answers."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return None
    async with stream:
        request = f"GET {target} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n"
        try:
            await stream.send_all(request.encode())
            head = await stream.receive_some(4096)
        except (trio.BrokenResourceError, OSError):
            return None
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return int(match.group(1)) if match else None


class Registry:
    """``docker-registry serve`` (distribution 2.8): filesystem storage, plain HTTP, no auth."""

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log = workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def _config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.workdir / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        return config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self._config()

        async def ready() -> bool:
            return await http_status("127.0.0.1", self.port, "/v2/") == 200

        argv = ["docker-registry", "serve", str(config)]
        await _serve_process(argv, log=self.log, ready=ready, task_status=task_status)


@dataclass(frozen=True)
class CriPlugin:
    """containerd's CRI plugin switched on: the kubelet's API, on containerd's own socket.

    ``config_path`` is the certs.d directory its registry reads ``hosts.toml`` files from; None
    leaves it unset, containerd 1.6's built-in default, under which CRI pulls read none.
    CRI pulls unpack into the same snapshotter as ``ctr`` pulls, and the CNI directories are
    inside the workdir and empty: pulling an image needs no pod network.
    """

    config_path: Path | None


class Containerd:
    """A private containerd (own root, state, socket) and a ``ctr`` bound to it.

    Its CRI plugin is off unless ``cri`` is given (``ctr`` pulls do not go through it).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        snapshotter: str = "native",
        namespace: str = "p2pull",
        cri: CriPlugin | None = None,
    ) -> None:
        self.workdir = workdir
        self.snapshotter = snapshotter
        self.namespace = namespace
        self.cri = cri
        self.address = str(workdir / "ctrd.sock")
        self.config_file = workdir / "config.toml"
        self.log = workdir / "containerd.log"
        if len(self.address) >= 100:
            raise RealPartError(f"socket path too long for a unix socket: {self.address}")

    def _config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = (
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            f'temp = "{self.workdir / "tmp"}"\n'
        )
        if self.cri is None:
            text += f'disabled_plugins = ["{CRI_PLUGIN}"]\n'
        text += (
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{self.workdir / "opt"}"\n'
        )
        if self.cri is not None:
            cni = self.workdir / "cni"
            text += (
                f'[plugins."{CRI_PLUGIN}".containerd]\n  snapshotter = "{self.snapshotter}"\n'
                f'[plugins."{CRI_PLUGIN}".cni]\n'
                f'  bin_dir = "{cni / "bin"}"\n  conf_dir = "{cni / "net.d"}"\n'
            )
            if self.cri.config_path is not None:
                text += f'[plugins."{CRI_PLUGIN}".registry]\n'
                text += f'  config_path = "{self.cri.config_path}"\n'
        self.config_file.write_text(text)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        return self.config_file

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = self._config()

        async def ready() -> bool:
            return (await self.ctr("version", check=False)).returncode == 0

        argv = ["containerd", "--config", str(config), "--log-level", "info"]
        await _serve_process(argv, log=self.log, ready=ready, task_status=task_status)

    async def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run ``ctr --address SOCK -n NAMESPACE ARGS``, output captured."""
        argv = ["ctr", "--address", self.address, "-n", self.namespace, *args]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        if check and done.returncode != 0:
            raise RealPartError(f"{' '.join(argv)} failed:\n{done.stderr.decode(errors='replace')}")
        return done

    async def pull(
        self, ref: str, *, hosts_dir: Path, plain_http: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """``ctr images pull`` through ``hosts_dir``; unpacks into the snapshotter by default.

        Runs with ``--debug`` so stderr lists every request ctr made (the resolver and the fetches
        run in the ctr process, not in the daemon). Never raises on failure: check returncode.
        """
        args = ["images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", self.snapshotter]
        if plain_http:
            args.append("--plain-http")
        return await self.ctr("--debug", *args, ref, check=False)

    async def is_unpacked(self, ref: str) -> bool:
        """True if all of ``ref``'s content is local and it is unpacked in our snapshotter."""
        check = ["images", "check", "--quiet", "--snapshotter", self.snapshotter, f"name=={ref}"]
        return (await self.ctr(*check)).stdout.decode().split() == [ref]


@dataclass(frozen=True)
class Stack:
    """A running registry and containerd, both stopped when :func:`open_stack` exits."""

    registry: Registry
    containerd: Containerd
    nursery: trio.Nursery


@contextlib.asynccontextmanager
async def open_stack(workdir: Path, *, snapshotter: str = "native") -> AsyncIterator[Stack]:
    """Start docker-registry and containerd under ``workdir``; stop and reap both on exit."""
    try:
        async with trio.open_nursery() as nursery:
            registry = Registry(workdir / "registry")
            await nursery.start(registry.run)
            containerd = Containerd(workdir / "containerd", snapshotter=snapshotter)
            await nursery.start(containerd.run)
            yield Stack(registry, containerd, nursery)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # a failed assert reads better without the group around it
            raise group.exceptions[0] from None
        raise


_DO_REQUEST_URL = re.compile(r'msg="do request".* url="([^"]+)"')


def requested_urls(ctr_debug_stderr: bytes) -> list[str]:
    """Every URL ctr asked for (``do request`` lines of ``ctr --debug``), failed attempts too."""
    lines = ctr_debug_stderr.decode(errors="replace").splitlines()
    return [m[1] for line in lines if (m := _DO_REQUEST_URL.search(line))]


# --- synthetic OCI images ---------------------------------------------------------------------


@dataclass(frozen=True)
class OciImage:
    layout: Path
    tag: str
    manifest: str
    config: str
    layers: tuple[str, ...]
    total_size: int  # bytes of manifest + config + compressed layers: what a pull must transfer


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _layer_tar(index: int, spec: int | bytes, rng: random.Random) -> bytes:
    payload = rng.randbytes(spec) if isinstance(spec, int) else spec
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            (f"layer{index}/data.bin", payload),
            (f"layer{index}/README", f"p2pull test layer {index}\n".encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_oci_layout(
    layout: Path, *, layers: Sequence[int | bytes], seed: int, tag: str = "latest"
) -> OciImage:
    """Write a valid single-platform OCI image layout to ``layout``.

    Each layer is a gzip'd tar with ``layerN/data.bin`` (``spec`` random bytes if an int, else the
    given bytes) and a small text file; the data is incompressible, so sizes are real.
    """
    rng = random.Random(seed)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media_type: str) -> dict[str, str | int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        (blobs / hexdigest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data)}

    layer_descs, diff_ids = [], []
    for index, spec in enumerate(layers):
        tar = _layer_tar(index, spec, rng)
        diff_ids.append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        layer_descs.append(put(gzip.compress(tar, compresslevel=1, mtime=0), LAYER_TYPE))
    config = {
        "architecture": _arch(),
        "os": "linux",
        "config": {"Cmd": ["/layer0/README"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"p2pull test layer {i}"} for i in range(len(layers))],
    }
    config_desc = put(json.dumps(config, sort_keys=True).encode(), CONFIG_TYPE)
    manifest = dict(
        schemaVersion=2, mediaType=MANIFEST_TYPE, config=config_desc, layers=layer_descs
    )
    manifest_desc = put(json.dumps(manifest, sort_keys=True).encode(), MANIFEST_TYPE)
    ref = {**manifest_desc, "annotations": {REF_NAME: tag}}
    oci_index = dict(schemaVersion=2, mediaType=INDEX_TYPE, manifests=[ref])
    (layout / "index.json").write_text(json.dumps(oci_index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descs = [manifest_desc, config_desc, *layer_descs]
    return OciImage(
        layout=layout,
        tag=tag,
        manifest=str(manifest_desc["digest"]),
        config=str(config_desc["digest"]),
        layers=tuple(str(d["digest"]) for d in layer_descs),
        total_size=sum(int(d["size"]) for d in descs),
    )


async def push_image(image: OciImage, dest: str) -> None:
    """Push ``image`` to ``dest`` (``HOST:PORT/REPO:TAG``) over plain HTTP with skopeo."""
    copy = ["--insecure-policy", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"]
    argv = ["skopeo", *copy, f"oci:{image.layout}:{image.tag}", f"docker://{dest}"]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise RealPartError(f"skopeo copy failed:\n{done.stderr.decode(errors='replace')}")


# --- byte-counting TCP proxy ------------------------------------------------------------------

_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]")


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes crossing it and logs HTTP request lines.

    ``bytes_from_upstream`` is what the origin really sent: the measure of "upstream egress".
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.bytes_from_upstream = 0
        self.bytes_to_upstream = 0
        self.connections = 0
        self.requests: list[str] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            to_upstream = functools.partial(self._pump, from_upstream=False)
            from_upstream = functools.partial(self._pump, from_upstream=True)
            nursery.start_soon(to_upstream, client, upstream, nursery.cancel_scope)
            nursery.start_soon(from_upstream, upstream, client, nursery.cancel_scope)

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        scope: trio.CancelScope,
        *,
        from_upstream: bool,
    ) -> None:
        pending = b""
        try:
            while data := await src.receive_some(65536):
                if from_upstream:
                    self.bytes_from_upstream += len(data)
                else:
                    self.bytes_to_upstream += len(data)
                    *lines, pending = (pending + data).split(b"\r\n")
                    pending = pending[-8192:]
                    self.requests.extend(
                        f"{m[1].decode()} {m[2].decode()}"
                        for line in lines
                        if (m := _REQUEST_LINE.fullmatch(line))
                    )
                await dst.send_all(data)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()
