"""Agent configuration: every flag also readable from a ``P2PULL_*`` environment variable."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHUNK_SIZE = 1024 * 1024


class ConfigError(ValueError):
    """A flag or environment value that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, what: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    mirror_addr: HostPort = HostPort("127.0.0.1", 5050)
    peer_addr: HostPort = HostPort("0.0.0.0", 5051)
    metrics_addr: HostPort = HostPort("0.0.0.0", 9395)
    data_dir: Path = Path("/var/lib/p2pull")
    upstreams: Mapping[str, str] = field(default_factory=dict)
    default_upstream: str | None = None
    only_listed_upstreams: bool = False  # --upstream-policy listed
    peers: tuple[HostPort, ...] = ()
    discovery: str = "mdns"  # "static", "mdns" or "dns:NAME"
    advertise_addr: str | None = None  # the IP other nodes reach this one at
    cluster_secret_file: Path | None = None
    cluster_secret: bytes | None = field(default=None, repr=False)  # in-process (demo, tests)
    credentials_file: Path | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    store_quota: int = 0
    min_free_disk: int = 2 << 30
    upload_rate: int = 0
    download_rate: int = 0
    max_uploads: int = 4
    mirror_max_connections: int = 1024
    metrics_max_connections: int = 64
    log_level: str = "INFO"
    log_format: str = "json"


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError as exc:
        raise ConfigError(f"invalid size {text!r} (examples: 4MiB, 200G, 1048576)") from exc
    if value < 0:
        raise ConfigError(f"size must not be negative: {text!r}")
    return value


def _positive(text: str, flag: str) -> int:
    if not str(text).isdigit() or int(text) < 1:
        raise ConfigError(f"{flag}: expected a whole number >= 1, got {text!r}")
    return int(text)


def env_name(flag: str) -> str:
    return "P2PULL_" + flag.lstrip("-").replace("-", "_").upper()


def add_agent_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    def opt(flag: str, **kwargs: object) -> None:
        name = env_name(flag)
        help_text = str(kwargs.pop("help", ""))
        if name in env:
            kwargs["default"] = env[name]
        parser.add_argument(flag, help=f"{help_text} [env {name}]", **kwargs)  # type: ignore[arg-type]

    opt("--mirror-addr", default="127.0.0.1:5050", help="registry mirror listen address")
    opt("--peer-addr", default="0.0.0.0:5051", help="peer protocol listen address")
    opt("--metrics-addr", default="0.0.0.0:9395", help="/metrics, /healthz, /readyz address")
    opt("--data-dir", default="/var/lib/p2pull", help="content store directory")
    opt(
        "--upstream",
        action="append",
        default=None,
        help="NS=URL: the upstream for requests with ?ns=NS (repeatable; env: comma-separated)",
    )
    opt("--default-upstream", default=None, help="upstream URL for clients that send no ns")
    opt(
        "--upstream-policy",
        default="any",
        choices=("any", "listed"),
        help="any: an ns not in --upstream is fetched from https://NS; listed: only --upstream "
        "ones and the default (others get 404, and containerd goes to the registry itself)",
    )
    opt("--peers", default="", help="static peer list HOST:PORT,... (used by the swarm)")
    opt(
        "--discovery",
        default=None,
        help="mdns, dns:NAME (a headless Service) or static (default: static with --peers, "
        "else mdns)",
    )
    opt("--advertise-addr", default=None, help="IP that other nodes reach this node at")
    opt("--cluster-secret-file", default=None, help="file holding the cluster secret")
    opt("--credentials", default=None, help="docker config.json-style registry credentials")
    opt("--chunk-size", default="1MiB", help="chunk size of new blobs")
    opt("--store-quota", default="0", help="disk quota of the store (0: no quota), e.g. 200GiB")
    opt(
        "--min-free-disk",
        default="2GiB",
        help="low-disk guard: keep this much free; beyond it blobs pass through uncached",
    )
    opt("--upload-rate", default="0", help="bytes/s to peers, all together (0: unlimited)")
    opt("--download-rate", default="0", help="bytes/s from peers and origin (0: unlimited)")
    opt("--max-uploads", default="4", help="chunks uploaded to peers at once")
    opt(
        "--mirror-max-connections",
        default="1024",
        help="connections the mirror serves at once; more are answered 503 and closed",
    )
    opt(
        "--metrics-max-connections",
        default="64",
        help="connections the /metrics, /healthz, /readyz server serves at once (then 503)",
    )
    opt("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    opt("--log-format", default="json", choices=("json", "text"), help="log line format")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    upstream_items: list[str] = []
    raw = args.upstream
    if isinstance(raw, str):
        upstream_items = [item for item in raw.split(",") if item.strip()]
    elif raw:
        for item in raw:
            upstream_items.extend(part for part in item.split(",") if part.strip())
    upstreams: dict[str, str] = {}
    for item in upstream_items:
        ns, sep, url = item.strip().partition("=")
        if not sep or not ns or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream: expected NS=http(s)://HOST[:PORT], got {item!r}")
        upstreams[ns] = url.rstrip("/")
    default = args.default_upstream
    if default is not None and not default.startswith(("http://", "https://")):
        raise ConfigError(f"--default-upstream: expected an http(s) URL, got {default!r}")
    policy = args.upstream_policy
    if policy not in ("any", "listed"):  # a value from the environment skips argparse's choices
        raise ConfigError(f"--upstream-policy: expected any or listed, got {policy!r}")
    chunk_size = parse_size(args.chunk_size)
    if not 64 * 1024 <= chunk_size <= 64 * 1024 * 1024:
        raise ConfigError("--chunk-size must be between 64KiB and 64MiB")
    discovery = args.discovery or ("static" if args.peers.strip() else "mdns")
    if discovery not in ("static", "mdns") and not (
        discovery.startswith("dns:") and len(discovery) > 4
    ):
        raise ConfigError(f"--discovery: expected mdns, static or dns:NAME, got {discovery!r}")
    if discovery == "static" and not args.peers.strip():
        raise ConfigError("--discovery static needs --peers")
    level = args.log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level: unknown level {args.log_level!r}")
    return AgentConfig(
        mirror_addr=HostPort.parse(args.mirror_addr, what="--mirror-addr"),
        peer_addr=HostPort.parse(args.peer_addr, what="--peer-addr"),
        metrics_addr=HostPort.parse(args.metrics_addr, what="--metrics-addr"),
        data_dir=Path(args.data_dir),
        upstreams=upstreams,
        default_upstream=default.rstrip("/") if default else None,
        only_listed_upstreams=policy == "listed",
        peers=tuple(
            HostPort.parse(p.strip(), what="--peers") for p in args.peers.split(",") if p.strip()
        ),
        discovery=discovery,
        advertise_addr=args.advertise_addr,
        cluster_secret_file=Path(args.cluster_secret_file) if args.cluster_secret_file else None,
        credentials_file=Path(args.credentials) if args.credentials else None,
        chunk_size=chunk_size,
        store_quota=parse_size(args.store_quota),
        min_free_disk=parse_size(args.min_free_disk),
        upload_rate=parse_size(args.upload_rate),
        download_rate=parse_size(args.download_rate),
        max_uploads=_positive(args.max_uploads, "--max-uploads"),
        mirror_max_connections=_positive(args.mirror_max_connections, "--mirror-max-connections"),
        metrics_max_connections=_positive(
            args.metrics_max_connections, "--metrics-max-connections"
        ),
        log_level=level,
        log_format=args.log_format,
    )


def load_agent_config(argv: list[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    parser = argparse.ArgumentParser(prog="p2pull agent")
    add_agent_arguments(parser, os.environ if env is None else env)
    return config_from_args(parser.parse_args(argv))
