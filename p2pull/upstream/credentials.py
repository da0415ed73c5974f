"""Registry credentials from a docker ``config.json``-style file (usually mounted from a Secret).

Only the ``auths`` section is read::

    {"auths": {"registry.example:5000": {"auth": "<base64 user:pass>"},
               "https://index.docker.io/v1/": {"username": "u", "password": "p"},
               "ghcr.io": {"identitytoken": "<OAuth2 refresh token>"}}}

Keys may be bare hosts or URLs; they are normalized to ``host[:port]`` (lowercase) and Docker
Hub's many spellings (``docker.io``, ``index.docker.io``, ``registry-1.docker.io``,
``https://index.docker.io/v1/``) all mean one registry. Entries left empty by a credential
helper (``credsStore``) are skipped; credential helpers themselves are not run.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from p2pull.errors import P2pullError
from p2pull.upstream.auth import basic_authorization

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class CredentialsError(P2pullError, ValueError):
    """The credentials file is missing, unreadable or malformed. A configuration error."""

    oci_code = "UNAUTHORIZED"


@dataclass(frozen=True, slots=True)
class Credential:
    """What we may send for one registry: a user/password pair and/or an identity token."""

    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"Credential(username={self.username!r}, secret=<hidden>)"

    @property
    def basic(self) -> str | None:
        """The ``Authorization: Basic`` value, when a user/password pair is known."""
        if self.username is None or self.password is None:
            return None
        return basic_authorization(self.username, self.password)


def registry_key(text: str) -> str:
    """Normalize a registry host or URL to ``host[:port]``; Docker Hub spellings -> docker.io."""
    text = text.strip()
    host = urlsplit(text).netloc if "://" in text else text.split("/", 1)[0]
    host = host.rsplit("@", 1)[-1].lower()
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


class Credentials:
    """Credentials by registry; look up with any spelling of the registry host."""

    def __init__(self, entries: Mapping[str, Credential] | None = None) -> None:
        self._entries = {registry_key(k): v for k, v in (entries or {}).items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Credentials(registries={sorted(self._entries)})"

    def lookup(self, registry: str) -> Credential | None:
        return self._entries.get(registry_key(registry))

    @classmethod
    def parse(cls, text: str | bytes, *, source: str = "config.json") -> Credentials:
        """Parse a config.json document. Raises CredentialsError saying what is wrong."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CredentialsError(f"{source}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise CredentialsError(f"{source}: top level must be a JSON object")
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise CredentialsError(f"{source}: 'auths' must be an object of registry -> entry")
        entries: dict[str, Credential] = {}
        for key, entry in auths.items():
            credential = _parse_entry(entry, where=f"{source}: auths[{key!r}]")
            if credential is not None:
                entries[key] = credential
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Credentials:
        """Read and parse a file (startup-time configuration, before the event loop is busy)."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise CredentialsError(
                f"cannot read credentials file {os.fspath(path)!r}: {exc}"
            ) from exc
        if len(data) > MAX_CONFIG_BYTES:
            raise CredentialsError(f"{os.fspath(path)}: larger than {MAX_CONFIG_BYTES} bytes")
        return cls.parse(data, source=os.fspath(path))


def _string_field(entry: dict[str, object], name: str, *, where: str) -> str | None:
    value = entry.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CredentialsError(f"{where}.{name} must be a string")
    return value


def _parse_entry(entry: object, *, where: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where} must be an object")
    auth = _string_field(entry, "auth", where=where)
    username = _string_field(entry, "username", where=where)
    password = _string_field(entry, "password", where=where)
    identity_token = _string_field(entry, "identitytoken", where=where)
    if auth is not None:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{where}.auth is not base64 of 'user:password'") from exc
        if ":" not in decoded:
            raise CredentialsError(f"{where}.auth must decode to 'user:password' (no ':' found)")
        username, password = decoded.split(":", 1)
    elif (username is None) != (password is None):
        raise CredentialsError(f"{where} needs both username and password")
    if username is None and identity_token is None:
        return None
    return Credential(username=username, password=password, identity_token=identity_token)
