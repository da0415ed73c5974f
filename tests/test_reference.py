"""The distribution grammar: repository names, tags, digests, manifest references, Range headers."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pull.errors import (
    DigestInvalid,
    InvalidReference,
    NameInvalid,
    RangeNotSatisfiable,
    TagInvalid,
)
from p2pull.reference import (
    ByteRange,
    Digest,
    ManifestRef,
    RegistryHost,
    parse_range,
    validate_name,
    validate_tag,
)

HEX = "0123456789abcdef" * 4
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _name_of_length(n: int) -> str:
    """A valid-looking name of exactly ``n`` characters made of ``a/`` components."""
    return ("a/" * n)[: n - 1] + "b"


# -- repository names ---------------------------------------------------------------------------

VALID_NAMES = [
    pytest.param("a", id="single-char"),
    pytest.param("0", id="single-digit"),
    pytest.param("library/ubuntu", id="two-components"),
    pytest.param("a/b/c/d/e", id="deep"),
    pytest.param("a.b", id="period"),
    pytest.param("a_b", id="underscore"),
    pytest.param("a__b", id="double-underscore"),
    pytest.param("a-b", id="dash"),
    pytest.param("a--b", id="double-dash"),
    pytest.param("a----b", id="many-dashes"),
    pytest.param("my.org-x_y/img__z", id="mixed-separators"),
    pytest.param(_name_of_length(255), id="255-chars"),
]

INVALID_NAMES = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("a/../b", id="dotdot-component"),
    pytest.param("a/./b", id="dot-component"),
    pytest.param("../etc", id="leading-dotdot"),
    pytest.param("Library/ubuntu", id="uppercase"),
    pytest.param("libraryX", id="uppercase-inside"),
    pytest.param("/a", id="leading-slash"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a//b", id="empty-component"),
    pytest.param(".a", id="leading-period"),
    pytest.param("a.", id="trailing-period"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("a-", id="trailing-dash"),
    pytest.param("_a", id="leading-underscore"),
    pytest.param("a_", id="trailing-underscore"),
    pytest.param("a___b", id="triple-underscore"),
    pytest.param("a..b", id="double-period"),
    pytest.param("a._b", id="period-underscore"),
    pytest.param("a-_b", id="dash-underscore"),
    pytest.param(_name_of_length(256), id="256-chars"),
    pytest.param("a" * 1000, id="1000-chars"),
    pytest.param("caf\u00e9", id="unicode-letter"),
    pytest.param("\uff4c\uff49\uff42", id="fullwidth-letters"),
    pytest.param("a\u0661", id="unicode-digit"),
    pytest.param("%2e%2e", id="percent-encoded-dotdot"),
    pytest.param("a%2fb", id="percent-encoded-slash"),
    pytest.param("a b", id="space"),
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a:b", id="colon"),
    pytest.param("a@b", id="at"),
    pytest.param("a\\b", id="backslash"),
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_name(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_name(name: str) -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name(name)
    assert info.value.oci_code == "NAME_INVALID"
    assert info.value.http_status == 400


def test_invalid_name_message_is_truncated() -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name("A" * 10_000)
    assert len(str(info.value)) < 200


# -- tags ---------------------------------------------------------------------------------------

VALID_TAGS = [
    pytest.param("latest", id="latest"),
    pytest.param("v1.2.3", id="semver"),
    pytest.param("1.0-rc_1", id="mixed"),
    pytest.param("A", id="uppercase-single"),
    pytest.param("_x", id="leading-underscore"),
    pytest.param("x." * 63 + "yz", id="many-periods"),
    pytest.param("a" * 128, id="128-chars"),
]

INVALID_TAGS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 129, id="129-chars"),
    pytest.param(".hidden", id="leading-period"),
    pytest.param("-x", id="leading-dash"),
    pytest.param("a/b", id="slash"),
    pytest.param("a:b", id="colon"),
    pytest.param("a+b", id="plus"),
    pytest.param("a b", id="space"),
    pytest.param("latest\n", id="trailing-newline"),
    pytest.param("\u00fcn\u00ef", id="unicode"),
    pytest.param("v\u0661", id="unicode-digit"),
]


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_valid_tag(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", INVALID_TAGS)
def test_invalid_tag(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)


# -- digests ------------------------------------------------------------------------------------

INVALID_DIGESTS = [
    pytest.param("", id="empty"),
    pytest.param(HEX, id="missing-prefix"),
    pytest.param(":" + HEX, id="empty-algorithm"),
    pytest.param("sha256:", id="empty-hex"),
    pytest.param("sha256:" + HEX[:63], id="63-hex"),
    pytest.param("sha256:" + HEX + "0", id="65-hex"),
    pytest.param("sha256:" + HEX[:8], id="short"),
    pytest.param("sha256:" + HEX.upper(), id="uppercase-hex"),
    pytest.param("SHA256:" + HEX, id="uppercase-algorithm"),
    pytest.param("sha512:" + HEX * 2, id="sha512"),
    pytest.param("sha256:" + HEX + "\n", id="trailing-newline"),
    pytest.param(" sha256:" + HEX, id="leading-space"),
    pytest.param("sha256:" + "g" * 64, id="non-hex"),
    pytest.param("sha256:" + "\u0661" * 64, id="unicode-digits"),
    pytest.param("sha256:" + HEX + ":x", id="trailing-junk"),
]


def test_digest_parse_round_trip() -> None:
    digest = Digest.parse("sha256:" + HEX)
    assert digest.hex == HEX
    assert str(digest) == "sha256:" + HEX
    assert Digest.parse(str(digest)) == digest


def test_digest_of_bytes() -> None:
    assert Digest.of(b"") == Digest(EMPTY_SHA256)
    assert Digest.of(b"abc").hex == hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize("text", INVALID_DIGESTS)
def test_invalid_digest(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        Digest.parse(text)
    assert info.value.oci_code == "DIGEST_INVALID"


def test_invalid_digest_message_is_truncated() -> None:
    with pytest.raises(DigestInvalid) as info:
        Digest.parse("sha256:" + "x" * 10_000)
    assert len(str(info.value)) < 200


# -- registry hosts (ns) ------------------------------------------------------------------------

VALID_HOSTS = [
    pytest.param("docker.io", "docker.io", None, id="name"),
    pytest.param("Registry.Example:5000", "registry.example", 5000, id="uppercase-and-port"),
    pytest.param("localhost", "localhost", None, id="single-label"),
    pytest.param("a-b.c0.example", "a-b.c0.example", None, id="dashes-digits"),
    pytest.param("127.0.0.1:5000", "127.0.0.1", 5000, id="ipv4"),
    pytest.param("10.0.0.1", "10.0.0.1", None, id="ipv4-no-port"),
    pytest.param("[::1]:5000", "::1", 5000, id="ipv6-loopback"),
    pytest.param("[2001:DB8:0:0::1]", "2001:db8::1", None, id="ipv6-normalized"),
    pytest.param("[::ffff:10.0.0.1]:443", "::ffff:a00:1", 443, id="ipv4-mapped"),
    pytest.param("host:65535", "host", 65535, id="highest-port"),
    pytest.param("host:1", "host", 1, id="lowest-port"),
    pytest.param("x1.example", "x1.example", None, id="digit-in-last-label"),
]

INVALID_HOSTS = [
    pytest.param("", id="empty"),
    pytest.param("[:::::]", id="bracketed-garbage"),
    pytest.param("[127.0.0.1]", id="bracketed-ipv4"),
    pytest.param("[::1", id="unclosed-bracket"),
    pytest.param("::1", id="ipv6-without-brackets"),
    pytest.param("[fe80::1%eth0]", id="zone-id"),
    pytest.param("[]", id="empty-brackets"),
    pytest.param("host:0", id="port-0"),
    pytest.param("host:99999", id="port-99999"),
    pytest.param("host:65536", id="port-65536"),
    pytest.param("host:", id="empty-port"),
    pytest.param("host:123456", id="six-digit-port"),
    pytest.param("127.1", id="short-ipv4"),
    pytest.param("2130706433", id="decimal-ipv4"),
    pytest.param("0x7f.0.0.1", id="hex-ipv4"),
    pytest.param("256.0.0.1", id="ipv4-out-of-range"),
    pytest.param("1.2.3.4.5", id="five-numbers"),
    pytest.param("a..b", id="empty-label"),
    pytest.param("-a.example", id="leading-dash"),
    pytest.param("a-.example", id="trailing-dash"),
    pytest.param("a" * 64 + ".example", id="label-64-chars"),
    pytest.param(".".join(["a" * 63] * 4) + ".b", id="name-over-253"),
    pytest.param("registry.example.", id="trailing-dot"),
    pytest.param("evil.example/path", id="path"),
    pytest.param("user@host", id="userinfo"),
    pytest.param("host:80:80", id="two-ports"),
    pytest.param("h_st", id="underscore"),
    pytest.param("caf\u00e9.example", id="unicode"),
    pytest.param("host\n", id="newline"),
    pytest.param("host:8\u0660", id="unicode-digit-port"),
]


@pytest.mark.parametrize(("text", "host", "port"), VALID_HOSTS)
def test_valid_registry_host(text: str, host: str, port: int | None) -> None:
    parsed = RegistryHost.parse(text)
    assert (parsed.host, parsed.port) == (host, port)
    assert RegistryHost.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", INVALID_HOSTS)
def test_invalid_registry_host(text: str) -> None:
    with pytest.raises(NameInvalid) as info:
        RegistryHost.parse(text)
    assert info.value.http_status == 400 and info.value.oci_code == "NAME_INVALID"
    assert len(str(info.value)) < 300


_HOST_ALPHABET = st.sampled_from("ab0-.:[]9fF%/@_ \u0660")


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.text(_HOST_ALPHABET, max_size=40) | st.from_regex(r"\[[0-9a-f:.]{0,40}\](:[0-9]{1,6})?"))
def test_registry_host_is_parsed_or_refused_never_half_valid(text: str) -> None:
    """Anything accepted makes a URL httpx takes, round-trips, and names no path or user."""
    try:
        parsed = RegistryHost.parse(text)
    except NameInvalid:
        return
    netloc = str(parsed)
    assert RegistryHost.parse(netloc) == parsed
    assert not set(netloc) & set("/@%? \\")
    url = httpx.URL(f"https://{netloc}/v2/")
    assert url.port == parsed.port and url.path == "/v2/"


# -- manifest references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("latest", ManifestRef(tag="latest"), id="tag"),
        pytest.param("V1.0_rc-2", ManifestRef(tag="V1.0_rc-2"), id="tag-mixed"),
        pytest.param("sha256:" + HEX, ManifestRef(digest=Digest(HEX)), id="digest"),
    ],
)
def test_manifest_ref_parse(text: str, expected: ManifestRef) -> None:
    ref = ManifestRef.parse(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("", TagInvalid, id="empty"),
        pytest.param(".x", TagInvalid, id="bad-tag"),
        pytest.param("a" * 129, TagInvalid, id="long-tag"),
        pytest.param("sha512:" + HEX * 2, DigestInvalid, id="sha512"),
        pytest.param("sha256:" + HEX.upper(), DigestInvalid, id="uppercase-digest"),
        pytest.param("sha256:abc", DigestInvalid, id="short-digest"),
        pytest.param("latest:1", DigestInvalid, id="colon-in-tag"),
    ],
)
def test_manifest_ref_parse_invalid(text: str, error: type[InvalidReference]) -> None:
    with pytest.raises(error):
        ManifestRef.parse(text)


# -- Range headers ------------------------------------------------------------------------------

RANGES = [
    pytest.param(None, 10, None, id="no-header"),
    pytest.param("bytes=0-", 10, (0, 9), id="open-from-0"),
    pytest.param("bytes=5-", 10, (5, 9), id="open-from-middle"),
    pytest.param("bytes=9-", 10, (9, 9), id="open-last-byte"),
    pytest.param("bytes=0-4", 10, (0, 4), id="closed"),
    pytest.param("bytes=3-3", 10, (3, 3), id="single-byte"),
    pytest.param("bytes=0-9", 10, (0, 9), id="closed-whole"),
    pytest.param("bytes=2-100", 10, (2, 9), id="end-beyond-size-clipped"),
    pytest.param("bytes=00-01", 10, (0, 1), id="leading-zeros"),
    pytest.param("bytes=-3", 10, (7, 9), id="suffix"),
    pytest.param("bytes=-10", 10, (0, 9), id="suffix-whole"),
    pytest.param("bytes=-100", 10, (0, 9), id="suffix-beyond-size"),
    pytest.param(" bytes=1-2 ", 10, (1, 2), id="surrounding-whitespace"),
    pytest.param("bytes=0-", 1, (0, 0), id="size-1"),
]

UNSATISFIABLE = [
    pytest.param("bytes=10-", 10, id="start-at-size"),
    pytest.param("bytes=11-", 10, id="start-beyond-size"),
    pytest.param("bytes=10-20", 10, id="closed-beyond-size"),
    pytest.param("bytes=5-4", 10, id="end-before-start"),
    pytest.param("bytes=-0", 10, id="empty-suffix"),
    pytest.param("bytes=-", 10, id="no-numbers"),
    pytest.param("bytes=", 10, id="no-spec"),
    pytest.param("bytes=0-1,3-4", 10, id="multi-range"),
    pytest.param("bytes=0-1, 3-4", 10, id="multi-range-space"),
    pytest.param("", 10, id="empty-header"),
    pytest.param("garbage", 10, id="garbage"),
    pytest.param("bytes 0-1", 10, id="no-equals"),
    pytest.param("items=0-1", 10, id="other-unit"),
    pytest.param("bytes=a-b", 10, id="letters"),
    pytest.param("bytes=0-1-2", 10, id="three-numbers"),
    pytest.param("bytes=+1-2", 10, id="plus-sign"),
    pytest.param("bytes=-1-2", 10, id="negative-start"),
    pytest.param("bytes=1.5-2", 10, id="fraction"),
    pytest.param("bytes=\u0661-", 10, id="unicode-digit"),
    pytest.param("bytes=0-\u0669", 10, id="unicode-digit-end"),
    pytest.param("bytes=0-", 0, id="size-0-open"),
    pytest.param("bytes=0-0", 0, id="size-0-closed"),
    pytest.param("bytes=-1", 0, id="size-0-suffix"),
]


@pytest.mark.parametrize(("header", "size", "expected"), RANGES)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    result = parse_range(header, size=size)
    if expected is None:
        assert result is None
    else:
        assert result == ByteRange(*expected)
        assert result.length == expected[1] - expected[0] + 1


@pytest.mark.parametrize(("header", "size"), UNSATISFIABLE)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size=size)
    assert info.value.size == size
    assert info.value.http_status == 416


@st.composite
def _size_and_valid_range(draw: st.DrawFn) -> tuple[int, str, int, int]:
    """(size, header, first byte asked, last byte asked) for a satisfiable single range."""
    size = draw(st.integers(1, 2**40))
    form = draw(st.sampled_from(["open", "closed", "suffix"]))
    if form == "suffix":
        suffix = draw(st.integers(1, 2 * size))
        return size, f"bytes=-{suffix}", size - suffix, size - 1
    start = draw(st.integers(0, size - 1))
    if form == "open":
        return size, f"bytes={start}-", start, size - 1
    end = draw(st.integers(start, 2 * size))
    return size, f"bytes={start}-{end}", start, end


@given(_size_and_valid_range())
def test_parse_range_stays_inside_the_blob(case: tuple[int, str, int, int]) -> None:
    size, header, first, last = case
    result = parse_range(header, size=size)
    assert result is not None
    assert 0 <= result.start <= result.end <= size - 1
    assert (result.start, result.end) == (max(first, 0), min(last, size - 1))


@given(st.text(max_size=40), st.integers(0, 2**40))
def test_parse_range_never_fails_otherwise(header: str, size: int) -> None:
    try:
        result = parse_range(header, size=size)
    except RangeNotSatisfiable:
        return
    assert result is not None
    assert 0 <= result.start <= result.end < size
