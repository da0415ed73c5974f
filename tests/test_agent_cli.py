"""The agent's configuration (flags and P2PULL_* variables), CLI commands and the demo."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from agent.cli import main
from agent.config import ConfigError, HostPort, load_agent_config, parse_size
from p2pull.httpserver import HttpServer, Request, Response

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """``main(["agent", ...])`` installs a handler on the root logger that writes to this test's
    captured stderr; later tests must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_flags_and_environment() -> None:
    env = {
        "P2PULL_MIRROR_ADDR": "127.0.0.1:6000",
        "P2PULL_UPSTREAM": "reg.local:5000=http://reg.local:5000,docker.io=https://mirror.example",
        "P2PULL_STORE_QUOTA": "2GiB",
        "P2PULL_PEERS": "198.18.0.2:5051, 198.18.0.3:5051",
    }
    env["P2PULL_CLUSTER_SECRET_FILE"] = "/etc/p2pull/cluster-secret"
    config = load_agent_config(["--data-dir", "/tmp/x", "--chunk-size", "1MiB"], env)
    assert config.mirror_addr == HostPort("127.0.0.1", 6000)
    assert dict(config.upstreams) == {
        "reg.local:5000": "http://reg.local:5000",
        "docker.io": "https://mirror.example",
    }
    assert config.store_quota == 2 << 30 and config.chunk_size == 1 << 20
    assert config.peers == (HostPort("198.18.0.2", 5051), HostPort("198.18.0.3", 5051))
    assert config.only_listed_upstreams is False  # default policy: any
    assert config.discovery == "static" and config.standalone is False
    # a flag beats the environment
    flagged = load_agent_config(["--mirror-addr", "0.0.0.0:7000"], env)
    assert flagged.mirror_addr == HostPort("0.0.0.0", 7000)
    listed = load_agent_config([], {**env, "P2PULL_UPSTREAM_POLICY": "listed"})
    assert listed.only_listed_upstreams is True
    assert (
        load_agent_config(["--upstream-policy", "any"], listed_env()).only_listed_upstreams is False
    )


def listed_env() -> dict[str, str]:
    return {"P2PULL_UPSTREAM_POLICY": "listed", "P2PULL_STANDALONE": "1"}


ALONE = ["--standalone"]


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
        pytest.param(["--max-uploads", "0"], id="no-upload-slots"),
        pytest.param(["--rack-prefix", "33"], id="rack-prefix-too-long"),
        pytest.param(["--rack-prefix", "/24"], id="rack-prefix-not-bits"),
    ],
)
def test_bad_configuration_is_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        load_agent_config([*ALONE, *argv], {})


def test_rack_prefix_from_a_flag_or_the_environment() -> None:
    assert load_agent_config(ALONE, {}).rack_prefix == 0
    assert load_agent_config([*ALONE, "--rack-prefix", "24"], {}).rack_prefix == 24
    assert load_agent_config(ALONE, {"P2PULL_RACK_PREFIX": "16"}).rack_prefix == 16


@pytest.mark.parametrize(
    ("flag", "variable", "bad"),
    [
        ("--upstream-policy", "P2PULL_UPSTREAM_POLICY", "some"),
        ("--log-format", "P2PULL_LOG_FORMAT", "xml"),
        ("--log-level", "P2PULL_LOG_LEVEL", "chatty"),
    ],
)
def test_a_value_outside_the_choices_is_refused_from_a_flag_and_from_the_environment(
    flag: str, variable: str, bad: str
) -> None:
    with pytest.raises(SystemExit):  # argparse's choices, on the command line
        load_agent_config([*ALONE, flag, bad], {})
    # argparse does not check a default; the variable's value is one
    with pytest.raises(ConfigError, match=f"(?i){flag} / {variable}: expected .*got '{bad}'"):
        load_agent_config(ALONE, {variable: bad})


def test_log_level_is_case_insensitive_either_way() -> None:
    assert load_agent_config([*ALONE, "--log-level", "debug"], {}).log_level == "DEBUG"
    assert load_agent_config(ALONE, {"P2PULL_LOG_LEVEL": "warning"}).log_level == "WARNING"


def test_an_unknown_variable_is_refused_with_the_likely_one() -> None:
    hint = r"P2PULL_LOG_FROMAT \(did you mean P2PULL_LOG_FORMAT\?\)"
    with pytest.raises(ConfigError, match=hint):
        load_agent_config(ALONE, {"P2PULL_LOG_FROMAT": "text"})
    # what the other commands read may sit in the agent's environment (the ConfigMap)
    env = {"P2PULL_REGISTRY": "docker.io", "P2PULL_MIRROR": "http://127.0.0.1:5050"}
    assert load_agent_config(ALONE, env).standalone


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        pytest.param(["--peers", "198.18.0.2:5051"], {}, "(--peers is set)", id="peers"),
        pytest.param([], {"P2PULL_PEERS": "198.18.0.2:5051"}, "(--peers is set)", id="env-peers"),
        pytest.param(["--discovery", "mdns"], {}, "(--discovery is set)", id="discovery"),
        pytest.param([], {}, "", id="nothing"),
    ],
)
def test_no_cluster_secret_is_an_error_that_says_how_to_make_one(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_agent_config(argv, env)
    message = str(refused.value)
    assert message.startswith(f"no --cluster-secret-file{' ' + named if named else ''}:")
    assert "head -c 32 /dev/urandom | base64" in message
    assert "kubectl -n p2pull create secret generic p2pull-cluster-secret" in message
    assert "--standalone" in message


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--peers", "198.18.0.2:5051"], id="peers"),
        pytest.param(["--discovery", "dns:p2pull-peers"], id="discovery"),
        pytest.param(["--cluster-secret-file", "/etc/p2pull/cluster-secret"], id="secret"),
    ],
)
def test_standalone_refuses_swarm_settings(argv: list[str]) -> None:
    with pytest.raises(ConfigError, match=f"--standalone runs no swarm, but {argv[0]} is set"):
        load_agent_config([*ALONE, *argv], {})


def test_standalone_from_the_environment() -> None:
    assert load_agent_config([], {"P2PULL_STANDALONE": "true"}).standalone
    with pytest.raises(ConfigError, match="P2PULL_STANDALONE: expected true or false"):
        load_agent_config([], {"P2PULL_STANDALONE": "maybe"})


def test_an_agent_without_a_secret_does_not_start_in_process(tmp_path: Path) -> None:
    """A config built in code (not from flags) is held to the same rule when the agent runs."""
    from agent.config import AgentConfig
    from agent.service import Agent

    config = AgentConfig(data_dir=tmp_path, metrics_addr=HostPort("127.0.0.1", 0))
    with pytest.raises(ConfigError, match="--standalone"):
        trio.run(Agent(config).run)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["agent", "--mirror", "127.0.0.1:22060"], id="agent-mirror"),
        pytest.param(["agent", "--standalone", "--peer", "198.18.0.2:5051"], id="agent-peer"),
        pytest.param(["status", "--mir", "http://127.0.0.1:5050"], id="status-mir"),
        pytest.param(["containerd-config", "--reg", "ghcr.io"], id="containerd-config-reg"),
        pytest.param(["demo", "--node", "2"], id="demo-node"),
    ],
)
def test_flags_are_never_abbreviated(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--layers", "-1"], id="negative-layers"),
        pytest.param(["--layers", "0"], id="no-layers"),
        pytest.param(["--nodes", "0"], id="no-nodes"),
        pytest.param(["--clients", "x"], id="clients-not-a-number"),
    ],
)
def test_demo_refuses_counts_it_cannot_run(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *argv])
    assert exited.value.code == 2 and "expected a whole number" in capsys.readouterr().err


def test_demo_refuses_a_size_smaller_than_its_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--size", "3", "--layers", "4"]) == 2
    assert "--size: expected 4B" in capsys.readouterr().err


def test_a_listener_that_cannot_bind_names_its_flag_and_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["agent", "--standalone", "--data-dir", str(tmp_path / "d"), "--check-containerd", "off"]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = main([*base, "--mirror-addr", f"127.0.0.1:{port}", "--metrics-addr", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--mirror-addr 127.0.0.1:{port}: cannot listen: something else listens on port" in err
    assert f"ss -ltnp 'sport = :{port}'" in err and "Traceback" not in err
    code = main([*base, "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "198.18.0.250:0"])
    err = capsys.readouterr().err
    assert code == 2 and "--metrics-addr 198.18.0.250:0: cannot listen: this host has no" in err


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
    base += ["--check-containerd", "off"]
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
    assert main([*base, "--standalone", "--data-dir", str(not_a_dir / "sub")]) == 2
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


def test_demo_makes_a_single_layer_of_256_mib() -> None:
    """``random.randbytes`` overflows at 256 MiB: ``p2pull demo --layers 1`` crashed."""
    from agent.demo import make_layers

    (layer,) = make_layers(256 << 20, 1, seed=1)
    assert len(layer) > 256 << 20  # the blob and its tar headers
