"""Registry authentication logic without I/O: challenges, token responses and the token cache.

``WWW-Authenticate`` follows RFC 7235: one header may carry several challenges, each a scheme
followed by either a token68 or comma-separated ``name=value`` parameters whose values may be
quoted strings (with commas and backslash escapes inside). The token cache follows the Docker
token spec: a token lives ``expires_in`` seconds (60 when omitted) from when it was issued; we
drop it a safety margin earlier. Time is always passed in (``now``): this module reads no clock.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from p2pull.errors import UpstreamAuthError

DEFAULT_EXPIRES_IN = 60.0
SAFETY_MARGIN = 10.0
MAX_TOKEN_RESPONSE = 1024 * 1024

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN68_CHARS = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ChallengeSyntaxError(UpstreamAuthError):
    """A ``WWW-Authenticate`` header that does not follow RFC 7235."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge. ``scheme`` is lowercased, as are parameter names."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> ChallengeSyntaxError:
        shown = self.text if len(self.text) <= 200 else self.text[:197] + "..."
        return ChallengeSyntaxError(f"malformed WWW-Authenticate at {self.pos} ({what}): {shown!r}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_separators(self) -> None:
        while self.peek() in (" ", "\t", ","):
            self.pos += 1

    def read(self, chars: frozenset[str]) -> str:
        start = self.pos
        while self.peek() and self.peek() in chars:
            self.pos += 1
        return self.text[start : self.pos]

    def read_quoted(self) -> str:
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        while True:
            ch = self.peek()
            if ch == "":
                raise self.fail("unterminated quoted string")
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\\":
                if self.peek() == "":
                    raise self.fail("dangling backslash")
                ch = self.peek()
                self.pos += 1
            out.append(ch)

    def looks_like_param(self) -> bool:
        """True when a ``token BWS "="`` follows that is not just token68 padding."""
        save = self.pos
        try:
            if not self.read(_TOKEN_CHARS):
                return False
            self.skip_ws()
            if self.peek() != "=":
                return False
            self.pos += 1
            self.skip_ws()
            return self.peek() == '"' or (self.peek() != "" and self.peek() in _TOKEN_CHARS)
        finally:
            self.pos = save


def parse_challenges(header: str) -> list[Challenge]:
    """Parse every challenge in one ``WWW-Authenticate`` header value."""
    scan = _Scanner(header)
    challenges: list[Challenge] = []
    scan.skip_separators()
    while scan.peek():
        scheme = scan.read(_TOKEN_CHARS)
        if not scheme:
            raise scan.fail("expected an auth scheme")
        params: dict[str, str] = {}
        token68: str | None = None
        scan.skip_ws()
        if scan.peek() and scan.peek() != "," and not scan.looks_like_param():
            token68 = scan.read(_TOKEN68_CHARS)
            token68 += scan.read(frozenset("="))
            if not token68:
                raise scan.fail("expected token68 or parameters")
            scan.skip_ws()
            if scan.peek() not in (",", ""):
                raise scan.fail("expected ',' after challenge")
        else:
            while True:
                scan.skip_separators()
                if not scan.looks_like_param():
                    break
                name = scan.read(_TOKEN_CHARS).lower()
                scan.skip_ws()
                scan.pos += 1  # "="
                scan.skip_ws()
                value = scan.read_quoted() if scan.peek() == '"' else scan.read(_TOKEN_CHARS)
                params.setdefault(name, value)
                scan.skip_ws()
                if scan.peek() not in (",", ""):
                    raise scan.fail("expected ',' between parameters")
        challenges.append(Challenge(scheme.lower(), params, token68))
        scan.skip_separators()
    return challenges


def parse_www_authenticate(values: Iterable[str]) -> list[Challenge]:
    """Parse all ``WWW-Authenticate`` header values of one response, in order."""
    return [challenge for value in values for challenge in parse_challenges(value)]


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> str:
    """Render a challenge as a header value (parameters always quoted)."""
    if challenge.token68 is not None:
        return f"{challenge.scheme} {challenge.token68}"
    params = ",".join(f"{name}={_quote(value)}" for name, value in challenge.params.items())
    return f"{challenge.scheme} {params}" if params else challenge.scheme


def find_challenge(challenges: Iterable[Challenge], scheme: str) -> Challenge | None:
    scheme = scheme.lower()
    return next((c for c in challenges if c.scheme == scheme), None)


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def basic_authorization(username: str, password: str) -> str:
    """The value of an ``Authorization: Basic`` header."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class TokenResponse:
    token: str
    expires_in: float


def parse_token_response(body: bytes) -> TokenResponse:
    """Parse a token endpoint's JSON answer (``token`` or OAuth2 ``access_token``)."""
    if len(body) > MAX_TOKEN_RESPONSE:
        raise UpstreamAuthError(f"token response too large ({len(body)} bytes)")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise UpstreamAuthError("token response is not JSON") from exc
    if not isinstance(doc, dict):
        raise UpstreamAuthError("token response is not a JSON object")
    token = doc.get("token") or doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise UpstreamAuthError("token response carries no token")
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return TokenResponse(token, float(expires_in))


def token_lifetime(expires_in: float | None) -> float:
    """How long we keep a token: its lifetime minus a margin (at most half of it)."""
    lifetime = DEFAULT_EXPIRES_IN if expires_in is None or expires_in <= 0 else expires_in
    return lifetime - min(SAFETY_MARGIN, lifetime / 2)


@dataclass(frozen=True, slots=True)
class _Entry:
    token: str
    expires_at: float


class TokenCache:
    """Bearer tokens keyed by ``(registry, scope)``, each valid until its expiry minus a margin."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, registry: str, scope: str, *, now: float) -> str | None:
        entry = self._entries.get((registry, scope))
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._entries[(registry, scope)]
            return None
        return entry.token

    def put(
        self, registry: str, scope: str, token: str, *, now: float, expires_in: float | None
    ) -> None:
        self._entries[(registry, scope)] = _Entry(token, now + token_lifetime(expires_in))

    def invalidate(self, registry: str, scope: str, *, token: str | None = None) -> None:
        """Forget the token for a key (only if it is still ``token``, when given)."""
        entry = self._entries.get((registry, scope))
        if entry is not None and (token is None or entry.token == token):
            del self._entries[(registry, scope)]

    def prune(self, *, now: float) -> None:
        """Drop every expired entry (the cache otherwise only forgets on lookup)."""
        self._entries = {k: e for k, e in self._entries.items() if now < e.expires_at}
