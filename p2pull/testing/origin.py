"""A fault-injecting OCI registry (pull side only) for tests, benchmarks and ``p2pull demo``.

Usage::

    origin = TestOrigin()
    async with trio.open_nursery() as nursery:
        await nursery.start(origin.run)          # listens on 127.0.0.1, port 0
        manifest, layers = origin.add_image("demo/app", "v1", [b"layer one", b"layer two"])
        origin.fault(layers[0]).fail_times = 2   # two 503s, then success
        ... pull from origin.url ...
        assert origin.bytes_sent_by_digest[layers[1]] == 9

Serves ``GET``/``HEAD`` of ``/v2/``, manifests (by tag and digest) and blobs, single ranges
(``bytes=N-``, ``bytes=N-M`` -> 206), OCI JSON errors. Knobs are plain attributes, settable at
any time: ``require_bearer`` (token flow with ``/token``), ``require_basic``, ``credentials``,
``redirect_blobs`` (307 to a second listener that refuses any Authorization), ``head_digest``
(False: HEAD omits Docker-Content-Digest), and :class:`Faults` globally (``origin.faults``) or
per digest (``origin.fault(digest)``). ``interrupt("reset" | "stall")`` acts on the bodies being
sent right now (mid-body faults at a moment of the caller's choosing). ``port`` fixes the
origin's port (a restarted origin comes back where its clients knew it). Everything it sent and
received is counted.
"""

from __future__ import annotations

import base64
import collections
import gzip
import hmac
import io
import json
import logging
import math
import secrets
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import trio

from p2pull.errors import P2pullError, RangeNotSatisfiable
from p2pull.httpserver import BodyAborted, BodySink, HttpServer, Request, Response
from p2pull.reference import NAME_RE, Digest, ManifestRef, parse_range

log = logging.getLogger(__name__)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
SERVICE = "test-origin"
_INVERT = bytes(255 - i for i in range(256))


@dataclass
class Faults:
    """Misbehaviour for one digest (``origin.fault(d)``) or for everything (``origin.faults``)."""

    fail_times: int = 0  # answer this many requests with ``fail_status``, then succeed
    fail_status: int = 503
    retry_after: int | None = None  # the Retry-After (seconds) of those answers (429, 503)
    truncate_at: int | None = None  # send this many body bytes of a response, then reset
    truncate_times: int | None = None  # how many responses to truncate (None: all of them)
    stall_at: int | None = None  # send this many body bytes of a response, then nothing ...
    stall_times: int | None = None  # ... in how many responses (None: all of them) ...
    stall_for: float = math.inf  # ... for this long, then reset (the connection stays open)
    corrupt: bool = False  # serve wrong bytes of the right length (headers stay truthful)
    corrupt_times: int | None = None  # how many responses to corrupt (None: all of them)
    rate: float | None = None  # throttle bodies to this many bytes per second


Interrupt = Literal["reset", "stall"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    range: str | None
    authorization: bool  # an Authorization header was present
    host: str | None
    listener: str  # "origin" or "cdn"


@dataclass(slots=True)
class _Repo:
    blobs: set[Digest] = field(default_factory=set)
    manifests: set[Digest] = field(default_factory=set)
    tags: dict[str, Digest] = field(default_factory=dict)


def tar_layer(files: Mapping[str, bytes], *, compress: bool = True) -> bytes:
    """A real (gzipped) tar layer holding ``files``: unpackable by containerd, for demos."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0) if compress else raw.getvalue()


def _error(
    status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return Response(status, [("content-type", "application/json"), *(headers or [])], body)


class _Body:
    """A response body sent in pieces, with the truncate/corrupt/rate faults applied."""

    def __init__(
        self,
        origin: TestOrigin,
        digest: Digest,
        data: bytes,
        start: int,
        end: int,
        *,
        faults: Faults,
        limit: int | None,
        stall_at: int | None,
        corrupt: bool,
    ) -> None:
        self.length = end - start
        self._origin, self._digest, self._data = origin, digest, data
        self._start, self._end = start, end
        self._corrupt, self._rate, self._limit = corrupt, faults.rate, limit
        self._stall_at, self._stall_for = stall_at, faults.stall_for
        self.interrupted: Interrupt | None = None  # set by TestOrigin.interrupt

    async def send(self, sink: BodySink) -> None:
        self._origin._sending.add(self)
        try:
            await self._send(sink)
        finally:
            self._origin._sending.discard(self)

    async def _stall(self, sent: int) -> None:
        await trio.sleep(self._stall_for)
        raise BodyAborted(f"fault: stalled {self._digest} after {sent} bytes, then reset")

    async def _send(self, sink: BodySink) -> None:
        piece_size = self._origin.piece_size
        if self._rate:
            piece_size = max(4096, min(piece_size, int(self._rate / 20)))
        sent = 0
        for offset in range(self._start, self._end, piece_size):
            piece = self._data[offset : min(offset + piece_size, self._end)]
            if self._corrupt:
                piece = piece.translate(_INVERT)
            for cut in (self._limit, self._stall_at):
                if cut is not None and sent + len(piece) > cut:
                    piece = piece[: max(0, cut - sent)]
            if self._rate:
                await trio.sleep(len(piece) / self._rate)
            if self.interrupted == "reset":
                raise BodyAborted(f"fault: reset {self._digest} after {sent} bytes")
            if self.interrupted == "stall":
                await self._stall(sent)
            if piece:
                await sink.write(piece)
                sent += len(piece)
                self._origin.bytes_sent += len(piece)
                self._origin.bytes_sent_by_digest[self._digest] += len(piece)
            if self._limit is not None and sent >= self._limit:
                raise BodyAborted(f"fault: truncated {self._digest} after {sent} bytes")
            if self._stall_at is not None and sent >= self._stall_at:
                await self._stall(sent)


class TestOrigin:
    """The registry. ``run`` serves it; the ``add_*`` methods fill it; counters tell what moved."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        piece_size: int = 256 * 1024,
        token_expires_in: int = 300,
    ) -> None:
        self.host = host
        self._listen_port = port
        self.piece_size = piece_size
        self.token_expires_in = token_expires_in
        self.require_bearer = False
        self.require_basic = False
        self.credentials: tuple[str, str] | None = None
        self.redirect_blobs = False
        self.head_digest = True
        self.faults = Faults()
        self.bytes_sent = 0
        self.bytes_sent_by_digest: collections.Counter[Digest] = collections.Counter()
        self.requests: list[RecordedRequest] = []
        self.tokens_issued = 0
        self._faults: dict[Digest, Faults] = {}
        self._blobs: dict[Digest, bytes] = {}
        self._manifests: dict[Digest, tuple[bytes, str]] = {}
        self._repos: dict[str, _Repo] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (scope, expiry)
        self._port: int | None = None
        self._cdn_port: int | None = None
        self._sending: set[_Body] = set()

    # -- serving ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host`` (origin and CDN, both port 0); report the origin's port."""
        async with trio.open_nursery() as nursery:
            cdn = HttpServer(self._handle_cdn, host=self.host, port=0, server_header="test-cdn")
            self._cdn_port = await nursery.start(cdn.run)
            main = HttpServer(
                self._handle, host=self.host, port=self._listen_port, server_header=SERVICE
            )
            self._port = await nursery.start(main.run)
            task_status.started(self._port)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TestOrigin is not running yet: start origin.run first")
        return self._port

    @property
    def netloc(self) -> str:
        """``host:port``, what containerd passes as ``ns``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self.host}:{self._cdn_port}"

    # -- content ------------------------------------------------------------------------------

    def add_blob(self, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        self._blobs[digest] = data
        self._repo(name).blobs.add(digest)
        return digest

    def add_manifest(self, name: str, tag: str | None, body: bytes, media_type: str) -> Digest:
        """Store a manifest, servable by digest and (when ``tag`` is given) by tag."""
        digest = Digest.of(body)
        self._manifests[digest] = (body, media_type)
        repo = self._repo(name)
        repo.manifests.add(digest)
        if tag is not None:
            repo.tags[ManifestRef.parse(tag).tag or tag] = digest
        return digest

    def add_image(
        self, name: str, tag: str | None, layers: list[bytes]
    ) -> tuple[Digest, list[Digest]]:
        """A real OCI image (config + manifest) over ``layers``; gzip layers get tar+gzip type.

        Returns the manifest digest and the layer digests. Build layers with :func:`tar_layer`
        when a real containerd will unpack the image; any bytes do for pulls alone.
        """
        descriptors, diff_ids, digests = [], [], []
        for layer in layers:
            gzipped = layer[:2] == b"\x1f\x8b"
            digest = self.add_blob(name, layer)
            digests.append(digest)
            diff_ids.append(str(Digest.of(gzip.decompress(layer)) if gzipped else digest))
            media_type = OCI_LAYER_GZIP if gzipped else OCI_LAYER_TAR
            descriptors.append({"mediaType": media_type, "digest": str(digest), "size": len(layer)})
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            },
            separators=(",", ":"),
        ).encode()
        config_digest = self.add_blob(name, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
            "layers": descriptors,
        }
        body = json.dumps(manifest, indent=2).encode()
        return self.add_manifest(name, tag, body, OCI_MANIFEST), digests

    @property
    def sending(self) -> int:
        """Bodies being sent right now."""
        return len(self._sending)

    def interrupt(self, kind: Interrupt) -> int:
        """Every body being sent now resets (``"reset"``) or stalls (``"stall"``: nothing more
        for ``stall_for`` of its faults, then a reset) before its next piece; how many."""
        for body in self._sending:
            body.interrupted = kind
        return len(self._sending)

    def fault(self, digest: Digest) -> Faults:
        """The faults of one digest (created on first use; they replace the global ones)."""
        return self._faults.setdefault(digest, Faults())

    def revoke_tokens(self) -> None:
        """Make every issued token invalid (clients must fetch new ones)."""
        self._tokens.clear()

    def count(
        self, *, method: str | None = None, contains: str = "", listener: str | None = None
    ) -> int:
        """How many recorded requests match (``contains`` is a substring of the path)."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and contains in r.path
            and (listener is None or r.listener == listener)
        )

    def _repo(self, name: str) -> _Repo:
        if NAME_RE.fullmatch(name) is None:
            raise ValueError(f"invalid repository name {name!r}")
        return self._repos.setdefault(name, _Repo())

    # -- request handling ---------------------------------------------------------------------

    def _record(self, request: Request, listener: str) -> None:
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                request.header("range"),
                request.header("authorization") is not None,
                request.header("host"),
                listener,
            )
        )

    async def _handle(self, request: Request) -> Response:
        self._record(request, "origin")
        try:
            return self._route(request)
        except Exception:  # a bug here must not take the server down: answer 500
            log.exception("test origin failed on %s %s", request.method, request.target)
            return _error(500, "UNKNOWN", "test origin handler failed")

    async def _handle_cdn(self, request: Request) -> Response:
        self._record(request, "cdn")
        if request.header("authorization") is not None:
            return _error(400, "UNSUPPORTED", "the CDN must never receive an Authorization header")
        try:
            digest = Digest.parse(request.path.removeprefix("/cdn/"))
            data = self._blobs[digest]
        except (P2pullError, KeyError):
            return _error(404, "BLOB_UNKNOWN", "no such blob on the CDN")
        return self._serve(request, digest, data, "application/octet-stream", blob=True)

    def _route(self, request: Request) -> Response:
        if request.path == "/token":
            return self._issue_token(request)
        if not request.path.startswith("/v2/"):
            return _error(404, "NOT_FOUND", "not a registry path")
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "this registry is read-only")
        rest = request.path.removeprefix("/v2/")
        name, kind, ref = "", "", ""
        for candidate in ("manifests", "blobs"):
            name, sep, ref = rest.rpartition(f"/{candidate}/")
            if sep:
                kind = candidate
                break
        denied = self._check_auth(request, name if kind else None)
        if denied is not None:
            return denied
        if not rest:
            return Response(200, [("docker-distribution-api-version", "registry/2.0")], b"{}")
        if not kind or NAME_RE.fullmatch(name) is None:
            return _error(404, "NAME_UNKNOWN", f"unknown path {request.path!r}")
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", f"repository {name!r} not known")
        try:
            if kind == "blobs":
                digest = Digest.parse(ref)
                if digest not in repo.blobs:
                    return _error(404, "BLOB_UNKNOWN", f"blob {digest} not in {name}")
                if self.redirect_blobs and request.method == "GET":
                    return Response(307, [("location", f"{self.cdn_url}/cdn/{digest}")])
                octet = "application/octet-stream"
                return self._serve(request, digest, self._blobs[digest], octet, blob=True)
            parsed = ManifestRef.parse(ref)
        except P2pullError as exc:
            return _error(400, exc.oci_code, str(exc))
        found = parsed.digest if parsed.tag is None else repo.tags.get(parsed.tag)
        if found is None or found not in repo.manifests:
            return _error(404, "MANIFEST_UNKNOWN", f"manifest {ref} not in {name}")
        body, media_type = self._manifests[found]
        return self._serve(request, found, body, media_type, blob=False)

    def _serve(
        self, request: Request, digest: Digest, data: bytes, media_type: str, *, blob: bool
    ) -> Response:
        faults = self._faults.get(digest, self.faults)
        if faults.fail_times > 0:
            faults.fail_times -= 1
            retry = [] if faults.retry_after is None else [("retry-after", str(faults.retry_after))]
            return _error(faults.fail_status, "UNAVAILABLE", "fault: injected failure", retry)
        headers = [("content-type", media_type), ("docker-content-digest", str(digest))]
        if not self.head_digest and request.method == "HEAD":
            headers = headers[:1]
        status, start, end = 200, 0, len(data)
        if blob:
            headers.append(("accept-ranges", "bytes"))
            try:
                byte_range = parse_range(request.header("range"), size=len(data))
            except RangeNotSatisfiable:
                return _error(
                    416, "RANGE_INVALID", "range", [("content-range", f"bytes */{len(data)}")]
                )
            if byte_range is not None:
                status, start, end = 206, byte_range.start, byte_range.end + 1
                headers.append(("content-range", f"bytes {start}-{end - 1}/{len(data)}"))
        headers.append(("content-length", str(end - start)))
        if request.method == "HEAD":
            return Response(status, headers, b"")
        limit = stall_at = None
        if faults.truncate_at is not None and faults.truncate_times != 0:
            limit = faults.truncate_at
            if faults.truncate_times is not None:
                faults.truncate_times -= 1
        if faults.stall_at is not None and faults.stall_times != 0:
            stall_at = faults.stall_at
            if faults.stall_times is not None:
                faults.stall_times -= 1
        corrupt = faults.corrupt and faults.corrupt_times != 0
        if corrupt and faults.corrupt_times is not None:
            faults.corrupt_times -= 1
        body = _Body(
            self,
            digest,
            data,
            start,
            end,
            faults=faults,
            limit=limit,
            stall_at=stall_at,
            corrupt=corrupt,
        )
        return Response(status, headers, body)

    # -- auth -----------------------------------------------------------------------------------

    def _basic_ok(self, request: Request) -> bool:
        if self.credentials is None:
            return True
        user, password = self.credentials
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return hmac.compare_digest(request.header("authorization") or "", expected)

    def _check_auth(self, request: Request, name: str | None) -> Response | None:
        scope = f"repository:{name}:pull" if name else ""
        if self.require_bearer:
            token = (request.header("authorization") or "").removeprefix("Bearer ")
            granted = self._tokens.get(token)
            valid = granted is not None and trio.current_time() < granted[1]
            if granted is not None and valid and (not name or granted[0] == scope):
                return None
            challenge = f'Bearer realm="{self.url}/token",service="{SERVICE}"'
            if scope:
                challenge += f',scope="{scope}"'
            return _error(401, "UNAUTHORIZED", "token required", [("www-authenticate", challenge)])
        if self.require_basic and (self.credentials is None or not self._basic_ok(request)):
            challenge = f'Basic realm="{SERVICE}"'
            return _error(401, "UNAUTHORIZED", "login required", [("www-authenticate", challenge)])
        return None

    def _issue_token(self, request: Request) -> Response:
        if not self._basic_ok(request):
            challenge = f'Basic realm="{SERVICE}"'
            return _error(401, "UNAUTHORIZED", "bad credentials", [("www-authenticate", challenge)])
        if request.query.get("service") != SERVICE:
            return _error(400, "UNSUPPORTED", "wrong or missing service")
        token = secrets.token_hex(16)
        expires = trio.current_time() + self.token_expires_in
        self._tokens[token] = (request.query.get("scope", ""), expires)
        self.tokens_issued += 1
        body = {"token": token, "access_token": token, "expires_in": self.token_expires_in}
        return Response(200, [("content-type", "application/json")], json.dumps(body).encode())
