"""render/apply/remove of containerd's certs.d/<registry>/hosts.toml (no containerd needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pull.containerd import (
    BACKUP_NAME,
    CREATED_MARKER,
    HOSTS_NAME,
    ContainerdConfigError,
    apply,
    remove,
    render_hosts_toml,
)

MIRROR = "http://127.0.0.1:30020"
REG = "registry.example:5000"

OPERATOR = """\
# Operator's file
server = "https://origin.example"  # the origin

# corporate cache
[host."https://cache.example"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/cache.pem"
  [host."https://cache.example".header]
    X-Team = ["gpu"]

# second cache, pull only
[host."https://cache2.example"]
  capabilities = ["pull"]
"""

OPERATOR_WITH_P2PULL = """\
# Operator's file
server = "https://origin.example"  # the origin

# corporate cache
[host."http://127.0.0.1:30020"] # managed by p2pull
capabilities = ["pull", "resolve"]

[host."https://cache.example"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/cache.pem"
  [host."https://cache.example".header]
    X-Team = ["gpu"]

# second cache, pull only
[host."https://cache2.example"]
  capabilities = ["pull"]
"""


def created(server: str | None) -> str:
    server_line = f'server = "{server}"\n' if server else ""
    return (
        f"{CREATED_MARKER}\n{server_line}\n"
        f'[host."{MIRROR}"] # managed by p2pull\ncapabilities = ["pull", "resolve"]\n'
    )


RENDER_CASES = [
    pytest.param(
        None,
        "127.0.0.1:5000",
        "http://127.0.0.1:5000",
        created("http://127.0.0.1:5000"),
        id="fresh-plain-http-origin",
    ),
    pytest.param(
        None,
        "docker.io",
        None,
        created("https://registry-1.docker.io"),
        id="fresh-docker-io-default-server",
    ),
    pytest.param(None, "ghcr.io", None, created("https://ghcr.io"), id="fresh-default-server"),
    pytest.param(None, "_default", None, created(None), id="fresh-_default-has-no-server"),
    pytest.param("", "ghcr.io", None, created("https://ghcr.io"), id="empty-file-is-fresh"),
    pytest.param(OPERATOR, REG, None, OPERATOR_WITH_P2PULL, id="operator-file-kept"),
    pytest.param(OPERATOR_WITH_P2PULL, REG, None, OPERATOR_WITH_P2PULL, id="second-run-same-text"),
    pytest.param(
        OPERATOR_WITH_P2PULL.replace(MIRROR, "http://10.0.0.1:1"),
        REG,
        None,
        OPERATOR_WITH_P2PULL,
        id="previous-mirror-url-replaced",
    ),
    pytest.param(
        f'server = "https://x"\n[host."{MIRROR}"]\n  capabilities = ["push"]\n',
        "x",
        None,
        f'server = "https://x"\n\n[host."{MIRROR}"] # managed by p2pull\n'
        'capabilities = ["pull", "resolve"]\n',
        id="operator-entry-for-same-url-replaced-not-duplicated",
    ),
    pytest.param(
        'server = "https://old"\n[host]\n',
        "x",
        "http://new:5000",
        f'server = "http://new:5000"\n[host]\n[host."{MIRROR}"] # managed by p2pull\n'
        'capabilities = ["pull", "resolve"]\n',
        id="explicit-server-overrides-operator",
    ),
]


@pytest.mark.parametrize(("existing", "registry", "server", "expected"), RENDER_CASES)
def test_render(existing: str | None, registry: str, server: str | None, expected: str) -> None:
    text = render_hosts_toml(existing, registry=registry, mirror_url=MIRROR, server_url=server)
    assert text == expected
    again = render_hosts_toml(text, registry=registry, mirror_url=MIRROR, server_url=server)
    assert again == text


hostnames = st.lists(
    st.from_regex(r"https://[a-z]{1,8}\.example(:[1-9][0-9]{0,3})?", fullmatch=True),
    unique=True,
    max_size=5,
)


@given(hosts=hostnames, server=st.none() | st.just("https://origin.example"))
def test_render_puts_mirror_first_and_keeps_operator_hosts_in_order(
    hosts: list[str], server: str | None
) -> None:
    lines = [f'server = "{server}"'] if server else []
    lines += [f'[host."{h}"]\ncapabilities = ["pull"]' for h in hosts]
    existing = "\n".join(lines) + "\n"
    text = render_hosts_toml(existing, registry="r.example", mirror_url=MIRROR)
    parsed = tomllib.loads(text)
    assert list(parsed["host"]) == [MIRROR, *hosts]
    assert parsed["host"][MIRROR] == {"capabilities": ["pull", "resolve"]}
    assert parsed["server"] == (server or "https://r.example")
    # containerd 1.6 orders hosts by the line of their header, not by the parsed table
    header_lines = [text.index(f'[host."{h}"]') for h in [MIRROR, *hosts]]
    assert header_lines == sorted(header_lines)


BAD_REGISTRIES = [
    "",
    "..",
    "../etc",
    "a/b",
    "a..b",
    "-bad.example",
    "host:",
    "host:99999",
    "host:0",
    "[:::::]",
    "[127.0.0.1]",
    "a b",
    "_default/..",
    "/abs",
    "x\n",
]


@pytest.mark.parametrize("registry", BAD_REGISTRIES, ids=repr)
def test_invalid_registry_refused_before_any_file_is_touched(tmp_path: Path, registry: str) -> None:
    certs = tmp_path / "certs.d"
    with pytest.raises(ContainerdConfigError, match="invalid registry"):
        apply(certs, registries=["ok.example", registry], mirror_url=MIRROR, server_urls=None)
    assert not certs.exists()
    with pytest.raises(ContainerdConfigError, match="invalid registry"):
        apply(certs, registries=["ok.example"], mirror_url=MIRROR, server_urls={registry: MIRROR})
    assert not certs.exists()
    certs.mkdir()
    with pytest.raises(ContainerdConfigError, match="invalid registry"):
        remove(certs, registries=[registry])
    with pytest.raises(ContainerdConfigError, match="invalid registry"):
        render_hosts_toml(None, registry=registry, mirror_url=MIRROR)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"mirror_url": "127.0.0.1:30020"}, "mirror URL", id="mirror-without-scheme"),
        pytest.param({"mirror_url": "ftp://x"}, "mirror URL", id="mirror-not-http"),
        pytest.param({"server_url": "origin"}, "server URL", id="server-without-scheme"),
        pytest.param({"existing": "server = "}, "not valid TOML", id="existing-not-toml"),
        pytest.param({"existing": "host = 1\n"}, "not a table", id="host-not-a-table"),
    ],
)
def test_render_refuses(kwargs: dict[str, str], match: str) -> None:
    args: dict[str, str | None] = {"existing": None, "mirror_url": MIRROR, **kwargs}
    existing = args.pop("existing")
    with pytest.raises(ContainerdConfigError, match=match):
        render_hosts_toml(existing, registry="r.example", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("registry", ["docker.io", "127.0.0.1:5000", "_default", "[::1]:5000"])
def test_apply_then_remove_without_operator_file_leaves_nothing(
    tmp_path: Path, registry: str
) -> None:
    written = apply(tmp_path, registries=[registry], mirror_url=MIRROR, server_urls=None)
    assert written == [tmp_path / registry / HOSTS_NAME]
    assert not (tmp_path / registry / BACKUP_NAME).exists()
    assert apply(tmp_path, registries=[registry], mirror_url=MIRROR, server_urls=None) == written
    assert sorted(p.name for p in (tmp_path / registry).iterdir()) == [HOSTS_NAME]
    assert remove(tmp_path, registries=[registry]) == written
    assert list(tmp_path.iterdir()) == []


def test_apply_keeps_first_backup_and_remove_restores_it(tmp_path: Path) -> None:
    path = tmp_path / REG / HOSTS_NAME
    path.parent.mkdir()
    path.write_text(OPERATOR)
    apply(tmp_path, registries=[REG], mirror_url=MIRROR, server_urls=None)
    apply(tmp_path, registries=[REG], mirror_url="http://127.0.0.1:1", server_urls=None)
    assert (tmp_path / REG / BACKUP_NAME).read_text() == OPERATOR
    assert path.read_text() == OPERATOR_WITH_P2PULL.replace(MIRROR, "http://127.0.0.1:1")
    assert remove(tmp_path, registries=[REG]) == [path]
    assert path.read_text() == OPERATOR
    assert sorted(p.name for p in path.parent.iterdir()) == [HOSTS_NAME]
    assert remove(tmp_path, registries=[REG]) == []


REMOVE_WITHOUT_BACKUP = [
    pytest.param(OPERATOR_WITH_P2PULL, OPERATOR, id="operator-file-loses-only-p2pull-entry"),
    pytest.param(
        created("https://ghcr.io").replace(CREATED_MARKER + "\n", ""),
        'server = "https://ghcr.io"\n\n[host]\n',
        id="empty-host-table-stub-kept",
    ),
    pytest.param(
        created("https://ghcr.io") + '[host."https://mine"]\n',
        None,
        id="created-file-with-operator-host-kept",
    ),
    pytest.param(OPERATOR, OPERATOR, id="nothing-of-ours-untouched"),
    pytest.param('server = "https://x"\n', 'server = "https://x"\n', id="no-host-table-untouched"),
]


@pytest.mark.parametrize(("existing", "expected"), REMOVE_WITHOUT_BACKUP)
def test_remove_without_backup(tmp_path: Path, existing: str, expected: str | None) -> None:
    path = tmp_path / "ghcr.io" / HOSTS_NAME
    path.parent.mkdir()
    path.write_text(existing)
    changed = remove(tmp_path, registries=["ghcr.io"])
    if expected is None:  # only the p2pull entry is gone; the operator's host stays
        assert tomllib.loads(path.read_text())["host"] == {"https://mine": {}}
    else:
        assert path.read_text() == expected
    assert changed == ([] if existing == expected else [path])


def test_remove_keeps_directory_with_other_files(tmp_path: Path) -> None:
    apply(tmp_path, registries=["ghcr.io"], mirror_url=MIRROR, server_urls=None)
    (tmp_path / "ghcr.io" / "ca.crt").write_text("cert")
    remove(tmp_path, registries=["ghcr.io"])
    assert [p.name for p in (tmp_path / "ghcr.io").iterdir()] == ["ca.crt"]
