"""containerd registry host configuration: ``certs.d/<registry>/hosts.toml``.

p2pull is listed as the first ``[host."<mirror_url>"]`` of each registry namespace, with
``capabilities = ["pull", "resolve"]``; the real registry stays as ``server``, so containerd falls
back to the origin by itself when the agent is down or answers with an error. Everything else
the operator wrote (keys, other hosts, comments) is kept: the file is edited with tomlkit.

Facts about containerd 1.6 this module relies on (``remotes/docker/config/hosts.go``):

- hosts are tried in the order of their ``[host."…"]`` header *line numbers*, then ``server``;
- a file without any ``host`` table fails to decode ("invalid `host` tree") and containerd then
  silently ignores it, so an empty ``[host]`` stub is kept when no host is left;
- ``_default`` is the fallback directory for registries that have none of their own.

p2pull's host entry carries the header comment ``# managed by p2pull``; a file p2pull created from
nothing starts with :data:`CREATED_MARKER`. Those two markers are what :func:`remove` undoes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from p2pull.errors import NameInvalid, P2pullError
from p2pull.reference import RegistryHost

__all__ = [
    "BACKUP_NAME",
    "CREATED_MARKER",
    "HOSTS_NAME",
    "HOST_MARKER",
    "ContainerdConfigError",
    "apply",
    "default_server",
    "remove",
    "render_hosts_toml",
    "validate_registry",
]

HOSTS_NAME = "hosts.toml"
BACKUP_NAME = "hosts.toml.p2pull-backup"
HOST_MARKER = "# managed by p2pull"
CREATED_MARKER = "# Created by p2pull; `p2pull` removes it again on uninstall."
MIRROR_CAPABILITIES = ("pull", "resolve")
DEFAULT_DIR = "_default"


class ContainerdConfigError(P2pullError):
    """A registry name, mirror URL or existing hosts.toml that p2pull refuses to work with."""


def validate_registry(registry: str) -> str:
    """Return ``registry`` if it is ``host[:port]`` or ``_default``; raise otherwise.

    Checked before any path is built from it: no slashes, no ``..``, nothing but a host name.
    """
    if registry == DEFAULT_DIR:
        return registry
    try:
        RegistryHost.parse(registry)
    except NameInvalid as exc:
        raise ContainerdConfigError(f"invalid registry name {registry!r}: {exc}") from exc
    return registry


def default_server(registry: str) -> str | None:
    """The origin containerd would use for ``registry`` (None for ``_default``: the pulled host)."""
    if registry == DEFAULT_DIR:
        return None
    if registry == "docker.io":
        return "https://registry-1.docker.io"
    return f"https://{registry}"


def _validate_url(url: str, *, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ContainerdConfigError(
            f"invalid {what} {url!r}: expected http(s)://host[:port][/path]"
        )
    return url


def _parse(existing: str | None) -> tomlkit.TOMLDocument:
    if existing is None or not existing.strip():
        doc = tomlkit.document()
        doc.add(tomlkit.comment(CREATED_MARKER.removeprefix("# ")))
        return doc
    try:
        return tomlkit.parse(existing)
    except TOMLKitError as exc:
        raise ContainerdConfigError(f"existing hosts.toml is not valid TOML: {exc}") from exc


def _hosts_table(doc: tomlkit.TOMLDocument) -> Table:
    host = doc.get("host")
    if host is None:
        doc.add("host", tomlkit.table(is_super_table=True))
        host = doc["host"]
    if not isinstance(host, Table):
        raise ContainerdConfigError("existing hosts.toml has a `host` key that is not a table")
    return host


def _is_ours(item: object) -> bool:
    return isinstance(item, Table) and HOST_MARKER in item.trivia.comment


def _drop_ours(host: Table, *, also: str | None = None) -> int:
    ours = [key for key, item in host.items() if _is_ours(item) or key == also]
    for key in ours:
        del host[key]
    return len(ours)


def render_hosts_toml(
    existing: str | None, *, registry: str, mirror_url: str, server_url: str | None = None
) -> str:
    """hosts.toml text listing ``mirror_url`` first, ahead of the operator's hosts.

    ``server`` is ``server_url`` if given, else the operator's, else :func:`default_server`.
    Idempotent: rendering the output again gives the same text.
    """
    validate_registry(registry)
    _validate_url(mirror_url, what="mirror URL")
    doc = _parse(existing)
    server = server_url or doc.get("server") or default_server(registry)
    if server is not None:
        doc["server"] = _validate_url(str(server), what="server URL")
    if _drop_ours(_hosts_table(doc), also=mirror_url):
        doc = tomlkit.parse(doc.as_string())  # `del` leaves placeholders that shift blank lines
    host = _hosts_table(doc)
    entry = tomlkit.table()
    entry.comment(HOST_MARKER.removeprefix("# "))
    entry["capabilities"] = list(MIRROR_CAPABILITIES)
    # containerd orders hosts by header line: ours must be the first table under `host`.
    if host:
        entry.add(tomlkit.nl())
        host.value._insert_at(0, mirror_url, entry)
    else:
        host.add(mirror_url, entry)
    return doc.as_string()


def _pristine(text: str) -> bool:
    return HOST_MARKER not in text and not text.startswith(CREATED_MARKER)


def _strip(existing: str) -> str | None:
    """``existing`` without p2pull's host entry; None if nothing the operator wrote is left."""
    if _pristine(existing):
        return existing
    doc = _parse(existing)
    host = _hosts_table(doc)
    _drop_ours(host)
    if not host:
        if existing.startswith(CREATED_MARKER) and set(doc) <= {"server", "host"}:
            return None
        del doc["host"]  # replaced, not assigned: assigning keeps the old item's comment
        doc.add("host", tomlkit.table())  # containerd 1.6 ignores a file without a `host` table
    return doc.as_string()


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContainerdConfigError(f"cannot read {path}: {exc}") from exc


def apply(
    certs_dir: Path,
    *,
    registries: list[str],
    mirror_url: str,
    server_urls: dict[str, str] | None = None,
) -> list[Path]:
    """Write ``<certs_dir>/<registry>/hosts.toml`` for each registry; return the files written.

    The operator's original file is kept once as ``hosts.toml.p2pull-backup``. Every name and URL
    is validated before anything on disk is touched.
    """
    servers = server_urls or {}
    for registry in [*registries, *servers]:
        validate_registry(registry)
    _validate_url(mirror_url, what="mirror URL")
    for url in servers.values():
        _validate_url(url, what="server URL")
    written = []
    for registry in registries:
        directory = certs_dir / registry
        path, backup = directory / HOSTS_NAME, directory / BACKUP_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            existing = _read(path)
            text = render_hosts_toml(
                existing, registry=registry, mirror_url=mirror_url, server_url=servers.get(registry)
            )
            if existing is not None and _pristine(existing) and not backup.exists():
                _write_atomic(backup, existing)
            _write_atomic(path, text)
        except OSError as exc:
            raise ContainerdConfigError(f"cannot write {path}: {exc}") from exc
        written.append(path)
    return written


def remove(certs_dir: Path, *, registries: list[str]) -> list[Path]:
    """Undo :func:`apply`; return the hosts.toml files restored, rewritten or deleted.

    A backup is restored as it is; otherwise only p2pull's host entry goes, and the file (and its
    directory, if empty) too when p2pull created it and nothing else is left in it.
    """
    for registry in registries:
        validate_registry(registry)
    changed = []
    for registry in registries:
        directory = certs_dir / registry
        path, backup = directory / HOSTS_NAME, directory / BACKUP_NAME
        try:
            if backup.exists():
                os.replace(backup, path)
                changed.append(path)
                continue
            existing = _read(path)
            if existing is None:
                continue
            stripped = _strip(existing)
            if stripped is None:
                path.unlink()
                if not any(directory.iterdir()):
                    directory.rmdir()
            elif stripped != existing:
                _write_atomic(path, stripped)
            else:
                continue
        except OSError as exc:
            raise ContainerdConfigError(f"cannot restore {path}: {exc}") from exc
        changed.append(path)
    return changed
