"""The agent's configuration (flags and P2PULL_* variables), CLI commands and the demo."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from agent.cli import main
from agent.config import ConfigError, HostPort, load_agent_config, parse_size
from p2pull.httpserver import HttpServer, Request, Response

ROOT = Path(__file__).resolve().parent.parent


def test_flags_and_environment() -> None:
    env = {
        "P2PULL_MIRROR_ADDR": "127.0.0.1:6000",
        "P2PULL_UPSTREAM": "reg.local:5000=http://reg.local:5000,docker.io=https://mirror.example",
        "P2PULL_STORE_QUOTA": "2GiB",
        "P2PULL_PEERS": "198.18.0.2:5051, 198.18.0.3:5051",
    }
    config = load_agent_config(["--data-dir", "/tmp/x", "--chunk-size", "1MiB"], env)
    assert config.mirror_addr == HostPort("127.0.0.1", 6000)
    assert dict(config.upstreams) == {
        "reg.local:5000": "http://reg.local:5000",
        "docker.io": "https://mirror.example",
    }
    assert config.store_quota == 2 << 30 and config.chunk_size == 1 << 20
    assert config.peers == (HostPort("198.18.0.2", 5051), HostPort("198.18.0.3", 5051))
    assert config.only_listed_upstreams is False  # default policy: any
    # a flag beats the environment
    flagged = load_agent_config(["--mirror-addr", "0.0.0.0:7000"], env)
    assert flagged.mirror_addr == HostPort("0.0.0.0", 7000)
    listed = load_agent_config([], {**env, "P2PULL_UPSTREAM_POLICY": "listed"})
    assert listed.only_listed_upstreams is True
    assert (
        load_agent_config(["--upstream-policy", "any"], listed_env()).only_listed_upstreams is False
    )


def listed_env() -> dict[str, str]:
    return {"P2PULL_UPSTREAM_POLICY": "listed"}


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--mirror-addr", "nohost"], id="addr-without-port"),
        pytest.param(["--mirror-addr", "h:99999"], id="port-out-of-range"),
        pytest.param(["--upstream", "reg=ftp://x"], id="upstream-not-http"),
        pytest.param(["--upstream", "http://x"], id="upstream-without-ns"),
        pytest.param(["--default-upstream", "reg.local"], id="default-not-url"),
        pytest.param(["--chunk-size", "1KiB"], id="chunk-too-small"),
        pytest.param(["--store-quota", "lots"], id="quota-not-size"),
        pytest.param(["--log-level", "chatty"], id="bad-level"),
    ],
)
def test_bad_configuration_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_agent_config(argv, {})


def test_bad_upstream_policy_is_refused() -> None:
    with pytest.raises(SystemExit):  # argparse's choices, on the command line
        load_agent_config(["--upstream-policy", "some"], {})
    with pytest.raises(ConfigError, match="upstream-policy"):  # the environment skips choices
        load_agent_config([], {"P2PULL_UPSTREAM_POLICY": "some"})


@pytest.mark.parametrize(
    ("text", "value"),
    [("4MiB", 4 << 20), ("4M", 4 << 20), ("1.5G", 3 << 29), ("1048576", 1 << 20), ("0", 0)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_containerd_config_refuses_bad_registry_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["containerd-config", "--registry", "../etc", "--dir", str(tmp_path)])
    assert code == 2
    assert "invalid registry" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_containerd_config_writes_and_removes(tmp_path: Path) -> None:
    args = ["containerd-config", "--registry", "ghcr.io", "--dir", str(tmp_path)]
    assert main([*args, "--mirror", "http://127.0.0.1:5050"]) == 0
    text = (tmp_path / "ghcr.io" / "hosts.toml").read_text()
    assert 'server = "https://ghcr.io"' in text and '[host."http://127.0.0.1:5050"]' in text
    assert main([*args, "--remove"]) == 0
    assert not (tmp_path / "ghcr.io" / "hosts.toml").exists()


async def test_handler_crash_answers_500_and_keeps_serving() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("bug")
        return Response(200, [], b"fine")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(HttpServer(handler, host="127.0.0.1", port=0).run)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.get("/boom")).status_code == 500
                assert (await client.get("/ok")).content == b"fine"
            nursery.cancel_scope.cancel()


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--nodes",
            "2",
            "--clients",
            "2",
            "--size",
            "4MiB",
            "--layers",
            "2",
            "--rate",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every pulled byte was verified" in result.stdout
    # two nodes x two clients, and the origin sent the image once: the swarm shared it
    egress = next(line for line in result.stdout.splitlines() if line.startswith("origin egress"))
    assert float(egress.split("=")[1].split("x")[0]) == pytest.approx(1.0, abs=0.01)


def test_agent_start_errors_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["agent", "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]
    missing = tmp_path / "no-such-secret"
    code = main([*base, "--data-dir", str(tmp_path / "d"), "--cluster-secret-file", str(missing)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--cluster-secret-file: cannot read {missing}" in err and "Traceback" not in err
    short = tmp_path / "short-secret"
    short.write_text("tiny")
    code = main([*base, "--data-dir", str(tmp_path / "d"), "--cluster-secret-file", str(short)])
    assert code == 2 and "fewer than 16 bytes" in capsys.readouterr().err
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert main([*base, "--data-dir", str(not_a_dir / "sub")]) == 2
    assert "cannot use data dir" in capsys.readouterr().err


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent import service

    block = range(service.LOWEST_FREE_PORT, service.LOWEST_FREE_PORT + 20)
    ephemeral = tmp_path / "ip_local_port_range"
    ephemeral.write_text(f"{block.stop}\t60999\n")  # leaves exactly ``block`` to choose from
    monkeypatch.setattr(service, "EPHEMERAL_RANGE", ephemeral)
    free_now = {port for port in block if service._bind("127.0.0.1", port)}
    taken, avoided = sorted(free_now)[:2]
    with socket.create_server(("127.0.0.1", taken)):
        expected = free_now - {taken, avoided}
        chosen = service.free_ports("127.0.0.1", len(expected), avoid={avoided})
        assert len(chosen) == len(set(chosen)) and set(chosen) == expected
        with pytest.raises(OSError, match="free TCP ports"):
            service.free_ports("127.0.0.1", len(expected) + 1, avoid={avoided})
