"""Pure tests of p2pull.upstream.auth: WWW-Authenticate parsing, token responses, TokenCache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pull.errors import UpstreamAuthError
from p2pull.upstream.auth import (
    Challenge,
    ChallengeSyntaxError,
    TokenCache,
    basic_authorization,
    find_challenge,
    format_challenge,
    parse_challenges,
    parse_token_response,
    parse_www_authenticate,
    pull_scope,
    token_lifetime,
)

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/alpine:pull"'
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(
            HUB,
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull",
                    },
                )
            ],
            id="docker-hub",
        ),
        pytest.param(
            'Basic realm="Registry Realm"',
            [Challenge("basic", {"realm": "Registry Realm"})],
            id="basic",
        ),
        pytest.param(
            'Bearer realm="r",scope="repository:a:pull,push repository:b:pull"',
            [
                Challenge(
                    "bearer", {"realm": "r", "scope": "repository:a:pull,push repository:b:pull"}
                )
            ],
            id="comma-inside-quotes",
        ),
        pytest.param(
            r'Bearer realm="say \"hi\" \\ there"',
            [Challenge("bearer", {"realm": 'say "hi" \\ there'})],
            id="escapes-in-quotes",
        ),
        pytest.param(
            "bearer REALM=r , Service = s",
            [Challenge("bearer", {"realm": "r", "service": "s"})],
            id="case-and-whitespace",
        ),
        pytest.param(
            'Bearer realm="a", Basic realm="b"',
            [Challenge("bearer", {"realm": "a"}), Challenge("basic", {"realm": "b"})],
            id="two-challenges",
        ),
        pytest.param(
            "Negotiate abc+/==, Bearer realm=x",
            [Challenge("negotiate", {}, token68="abc+/=="), Challenge("bearer", {"realm": "x"})],
            id="token68-then-params",
        ),
        pytest.param("Bearer", [Challenge("bearer", {})], id="bare-scheme"),
        pytest.param(
            'Bearer realm="a",realm="b"', [Challenge("bearer", {"realm": "a"})], id="first-wins"
        ),
        pytest.param("", [], id="empty"),
        pytest.param(
            ' , Bearer realm="", ', [Challenge("bearer", {"realm": ""})], id="empty-elements"
        ),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        pytest.param('Bearer realm="unterminated', id="unterminated-quote"),
        pytest.param('Bearer realm="a" service="b"', id="missing-comma"),
        pytest.param('Bearer realm="a\\', id="dangling-backslash"),
        pytest.param("=oops", id="no-scheme"),
        pytest.param("Bearer a b", id="token68-then-junk"),
        pytest.param('Bearer realm="a" x', id="junk-after-param"),
    ],
)
def test_parse_challenges_rejects(header: str) -> None:
    with pytest.raises(ChallengeSyntaxError):
        parse_challenges(header)
    assert issubclass(ChallengeSyntaxError, UpstreamAuthError)


def test_parse_www_authenticate_joins_headers_and_find_challenge() -> None:
    challenges = parse_www_authenticate(['Basic realm="x"', HUB])
    bearer = find_challenge(challenges, "BEARER")
    assert bearer is not None
    assert bearer.realm == "https://auth.docker.io/token"
    assert bearer.service == "registry.docker.io"
    assert bearer.scope == "repository:library/alpine:pull"
    assert find_challenge(challenges, "digest") is None


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(
    st.lists(st.tuples(_token, st.dictionaries(_token, _value, max_size=4)), min_size=1, max_size=3)
)
def test_format_then_parse_round_trips(items: list[tuple[str, dict[str, str]]]) -> None:
    challenges = [Challenge(scheme, params) for scheme, params in items]
    header = ", ".join(format_challenge(c) for c in challenges)
    assert parse_challenges(header) == challenges


@pytest.mark.parametrize(
    ("body", "token", "expires_in"),
    [
        pytest.param(b'{"token": "t1", "expires_in": 300}', "t1", 300.0, id="token"),
        pytest.param(b'{"access_token": "t2"}', "t2", 60.0, id="oauth-default-60"),
        pytest.param(b'{"token": "t3", "access_token": "other"}', "t3", 60.0, id="token-wins"),
        pytest.param(b'{"token": "t4", "expires_in": true}', "t4", 60.0, id="bool-ignored"),
        pytest.param(b'{"token": "t5", "expires_in": -5}', "t5", 60.0, id="negative-ignored"),
    ],
)
def test_parse_token_response(body: bytes, token: str, expires_in: float) -> None:
    parsed = parse_token_response(body)
    assert (parsed.token, parsed.expires_in) == (token, expires_in)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-object"),
        pytest.param(b'{"expires_in": 60}', id="no-token"),
        pytest.param(b'{"token": 5}', id="token-not-string"),
    ],
)
def test_parse_token_response_rejects(body: bytes) -> None:
    with pytest.raises(UpstreamAuthError):
        parse_token_response(body)


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [
        pytest.param(None, 50.0, id="default-60-minus-10"),
        pytest.param(300.0, 290.0, id="300-minus-10"),
        pytest.param(10.0, 5.0, id="short-keeps-half"),
        pytest.param(0.0, 50.0, id="zero-means-default"),
    ],
)
def test_token_lifetime(expires_in: float | None, lifetime: float) -> None:
    assert token_lifetime(expires_in) == lifetime


@pytest.mark.parametrize(
    ("expires_in", "now", "hit"),
    [
        pytest.param(300.0, 1000.0, True, id="fresh"),
        pytest.param(300.0, 1289.9, True, id="just-before-margin"),
        pytest.param(300.0, 1290.0, False, id="inside-margin"),
        pytest.param(None, 1049.0, True, id="default-fresh"),
        pytest.param(None, 1050.0, False, id="default-expired"),
    ],
)
def test_token_cache_expiry(expires_in: float | None, now: float, hit: bool) -> None:
    cache = TokenCache()
    cache.put("r.example", "repository:a:pull", "tok", now=1000.0, expires_in=expires_in)
    assert cache.get("r.example", "repository:a:pull", now=now) == ("tok" if hit else None)


def test_token_cache_keys_and_invalidation() -> None:
    cache = TokenCache()
    cache.put("r1", pull_scope("a"), "t-a", now=0.0, expires_in=300)
    cache.put("r1", pull_scope("b"), "t-b", now=0.0, expires_in=300)
    cache.put("r2", pull_scope("a"), "t-r2", now=0.0, expires_in=5)
    assert cache.get("r1", "repository:a:pull", now=1.0) == "t-a"
    assert cache.get("r2", "repository:a:pull", now=1.0) == "t-r2"
    assert cache.get("r1", "repository:c:pull", now=1.0) is None
    cache.invalidate("r1", pull_scope("a"), token="not-this-one")
    assert cache.get("r1", pull_scope("a"), now=1.0) == "t-a"
    cache.invalidate("r1", pull_scope("a"), token="t-a")
    assert cache.get("r1", pull_scope("a"), now=1.0) is None
    cache.prune(now=100.0)
    assert len(cache) == 1


def test_basic_authorization() -> None:
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
