"""Agent configuration: every flag also readable from a ``P2PULL_*`` environment variable."""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_MIN_CHUNKS = 128
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    standalone: bool = False  # no swarm, on purpose (--standalone)
    credentials_file: Path | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    min_chunks: int = DEFAULT_MIN_CHUNKS
    store_quota: int = 0
    min_free_disk: int = 2 << 30
    upload_rate: int = 0
    download_rate: int = 0
    max_uploads: int = 4
    rack_prefix: int = 0  # leading address bits that name a node's rack (0: racks not known)
    mirror_max_connections: int = 1024
    metrics_max_connections: int = 64
    log_level: str = "INFO"
    log_format: str = "json"
    containerd_config: str = "auto"  # a config.toml path, "auto" or "off"


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


def _rack_prefix(text: str) -> int:
    if not str(text).isdigit() or int(text) > 32:
        raise ConfigError(f"--rack-prefix: expected a number of bits 0-32, got {text!r}")
    return int(text)


def env_name(flag: str) -> str:
    return "P2PULL_" + flag.lstrip("-").replace("-", "_").upper()


# Variables read by the other commands (containerd-config, status, prefetch, purge); an agent
# started with them in its environment (the DaemonSet's ConfigMap) leaves them alone.
OTHER_COMMANDS_ENV = frozenset({"P2PULL_MIRROR", "P2PULL_REGISTRY", "P2PULL_DIR"})
SECRET_HOWTO = (
    "create one and give every node the same file: "
    "`head -c 32 /dev/urandom | base64 > /etc/p2pull/cluster-secret`, then "
    "--cluster-secret-file /etc/p2pull/cluster-secret (in Kubernetes: "
    "`kubectl -n p2pull create secret generic p2pull-cluster-secret "
    '--from-literal=secret="$(head -c 32 /dev/urandom | base64)"`)'
)


def add_agent_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The agent's flags; each also read from its ``P2PULL_*`` variable in ``env`` (flags win).
    The help texts are the meaning column of docs/operations.md's configuration table
    (``scripts/config-table`` prints it)."""

    def opt(flag: str, **kwargs: object) -> None:
        name = env_name(flag)
        help_text = str(kwargs.pop("help", ""))
        if name in env:
            kwargs["default"] = env[name]
        parser.add_argument(flag, help=f"{help_text} [env {name}]", **kwargs)  # type: ignore[arg-type]

    opt(
        "--mirror-addr",
        default="127.0.0.1:5050",
        help="registry mirror listen address (keep it on 127.0.0.1: on the host network a wider "
        "address is an open pull proxy with the agent's credentials)",
    )
    opt("--peer-addr", default="0.0.0.0:5051", help="peer protocol listen address")
    opt(
        "--advertise-addr",
        default=None,
        help="the IP other nodes reach this node at (in Kubernetes: status.hostIP; default: the "
        "peer address if not 0.0.0.0, else the address the host name resolves to)",
    )
    opt(
        "--discovery",
        default=None,
        help="mdns (flat L2), dns:NAME (A records of a headless Service, re-resolved every 5 s; "
        "a failed lookup keeps the last view) or static (default: static with --peers, else "
        "mdns)",
    )
    opt(
        "--peers",
        default="",
        help="static peer list IP:PORT,... (may include this node)",
    )
    opt(
        "--cluster-secret-file",
        default=None,
        help="file holding the cluster secret (at least 16 bytes, the same on every node) for "
        "the HMAC peer handshake; required unless --standalone",
    )
    opt(
        "--standalone",
        action="store_true",
        help="run without the swarm: this node pulls alone from the origin (a lab, a single "
        "node); refuses --peers, --discovery and --cluster-secret-file",
    )
    opt(
        "--metrics-addr",
        default="0.0.0.0:9395",
        help="/metrics, /healthz and /readyz, nothing else (docs/security.md)",
    )
    opt("--data-dir", default="/var/lib/p2pull", help="content store directory")
    opt(
        "--check-containerd",
        default="auto",
        help="containerd's config.toml to check at start for config_path (auto: "
        "/host/etc/containerd/config.toml, then /etc/containerd/config.toml, then "
        "`containerd config dump`; off: no check)",
    )
    opt(
        "--upstream",
        action="append",
        default=None,
        help="NS=URL: the origin for requests with ?ns=NS (repeatable; env: comma-separated)",
    )
    opt(
        "--default-upstream",
        default=None,
        help="origin URL for clients that send no ns (skopeo, crane)",
    )
    opt(
        "--upstream-policy",
        default="any",
        choices=("any", "listed"),
        help="any: an ns not in --upstream is fetched from https://NS; listed: only --upstream "
        "registries and the default's, others get 404 (containerd then goes to the registry "
        "itself)",
    )
    opt(
        "--credentials",
        default=None,
        help="docker config.json-style file (auths with auth, username/password or "
        "identitytoken) for private registries",
    )
    opt(
        "--chunk-size",
        default="1MiB",
        help="chunk size of new blobs (64KiB-64MiB); smaller chunks pipeline better through the "
        "swarm, larger ones cost less CPU per byte (docs/benchmarks.md)",
    )
    opt(
        "--min-chunks",
        default=str(DEFAULT_MIN_CHUNKS),
        help="a new blob that would have fewer chunks gets finer ones (the chunk size halved, "
        "not below 256KiB): a small layer still pipelines through many nodes",
    )
    opt(
        "--store-quota",
        default="0",
        help="disk quota of the store, e.g. 200GiB (0: none); least recently used complete "
        "blobs not being served are evicted",
    )
    opt(
        "--min-free-disk",
        default="2GiB",
        help="low-disk guard: evict LRU blobs to keep this free; if nothing can go, new blobs "
        "pass through uncached from peers (8 MiB of memory per blob) or the origin (verified; "
        "ranges answered 503)",
    )
    opt("--upload-rate", default="0", help="bytes/s to all peers together (0: unlimited)")
    opt(
        "--download-rate",
        default="0",
        help="bytes/s from origin and peers together (0: unlimited)",
    )
    opt(
        "--max-uploads",
        default="4",
        help="chunks uploaded to peers at once (at most 2 per peer)",
    )
    opt(
        "--rack-prefix",
        default="0",
        help="leading bits of a peer address naming its rack or zone, e.g. 24: nodes in one "
        "/24 share a rack and ask each other first (IPv6: 32 more bits; 0: racks not known)",
    )
    opt(
        "--mirror-max-connections",
        default="1024",
        help="connections the mirror holds at once; at the cap a new one closes the one waiting "
        "longest for a request (all busy: 503)",
    )
    opt(
        "--metrics-max-connections",
        default="64",
        help="the same for the /metrics, /healthz, /readyz server",
    )
    opt("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="log level")
    opt("--log-format", default="json", choices=("json", "text"), help="json lines or text")


def _choice(args: argparse.Namespace, flag: str, choices: tuple[str, ...]) -> str:
    """argparse checks ``choices`` on the command line only, not on a default taken from the
    environment: check both here, naming the flag and its variable."""
    value = str(getattr(args, flag.lstrip("-").replace("-", "_")))
    if value not in choices:
        raise ConfigError(
            f"{flag} / {env_name(flag)}: expected {' or '.join(choices)}, got {value!r}"
        )
    return value


def _switch(value: object, flag: str) -> bool:
    """A store_true flag, or its variable's text (1/true/yes, 0/false/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{env_name(flag)}: expected true or false, got {value!r}")


def check_environment(env: Mapping[str, str], known: Collection[str]) -> None:
    """A ``P2PULL_*`` variable that nothing reads is a typo that would silently do nothing."""
    unknown = sorted(name for name in env if name.startswith("P2PULL_") and name not in known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError("unknown setting in the environment: " + ", ".join(hints))


def agent_env_names() -> frozenset[str]:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_agent_arguments(parser, {})
    return frozenset(
        env_name(flag)
        for action in parser._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    )


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AgentConfig:
    """The agent's configuration from parsed flags; ``env`` (default: the process's) is checked
    for ``P2PULL_*`` variables that nothing reads."""
    check_environment(os.environ if env is None else env, agent_env_names() | OTHER_COMMANDS_ENV)
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
    policy = _choice(args, "--upstream-policy", ("any", "listed"))
    chunk_size = parse_size(args.chunk_size)
    if not 64 * 1024 <= chunk_size <= 64 * 1024 * 1024:
        raise ConfigError("--chunk-size must be between 64KiB and 64MiB")
    standalone = _switch(args.standalone, "--standalone")
    discovery = _discovery(args, standalone=standalone)
    level = _choice(args, "--log-level", LOG_LEVELS)
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
        standalone=standalone,
        credentials_file=Path(args.credentials) if args.credentials else None,
        chunk_size=chunk_size,
        min_chunks=_positive(args.min_chunks, "--min-chunks"),
        store_quota=parse_size(args.store_quota),
        min_free_disk=parse_size(args.min_free_disk),
        upload_rate=parse_size(args.upload_rate),
        download_rate=parse_size(args.download_rate),
        max_uploads=_positive(args.max_uploads, "--max-uploads"),
        rack_prefix=_rack_prefix(args.rack_prefix),
        mirror_max_connections=_positive(args.mirror_max_connections, "--mirror-max-connections"),
        metrics_max_connections=_positive(
            args.metrics_max_connections, "--metrics-max-connections"
        ),
        log_level=level,
        log_format=_choice(args, "--log-format", ("json", "text")),
        containerd_config=args.check_containerd,
    )


def _discovery(args: argparse.Namespace, *, standalone: bool) -> str:
    """The discovery source, after checking that the swarm settings can work together: peers
    authenticate with the cluster secret, so a swarm without one cannot form, and a node that
    was meant to share would pull every blob from the origin alone."""
    peers, chosen, secret = args.peers.strip(), args.discovery, args.cluster_secret_file
    if standalone:
        given = [
            flag
            for flag, value in (
                ("--peers", peers),
                ("--discovery", chosen),
                ("--cluster-secret-file", secret),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"--standalone runs no swarm, but {', '.join(given)} is set: drop one or the other"
            )
        return "static"
    if not secret:
        asked = " (--peers is set)" if peers else " (--discovery is set)" if chosen else ""
        raise ConfigError(
            f"no --cluster-secret-file{asked}: peers authenticate with a cluster secret, so "
            f"without one this node would pull every blob from the origin alone. "
            f"{SECRET_HOWTO[0].upper()}{SECRET_HOWTO[1:]}. To run a node alone on purpose, "
            "pass --standalone"
        )
    discovery = chosen or ("static" if peers else "mdns")
    if discovery not in ("static", "mdns") and not (
        discovery.startswith("dns:") and len(discovery) > 4
    ):
        raise ConfigError(f"--discovery: expected mdns, static or dns:NAME, got {discovery!r}")
    if discovery == "static" and not peers:
        raise ConfigError("--discovery static needs --peers")
    return discovery


def load_agent_config(argv: list[str], env: Mapping[str, str] | None = None) -> AgentConfig:
    environment = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="p2pull agent", allow_abbrev=False)
    add_agent_arguments(parser, environment)
    return config_from_args(parser.parse_args(argv), environment)


TABLE_START = "<!-- configuration table: generated by scripts/config-table, do not edit -->"
TABLE_END = "<!-- end of configuration table -->"


def markdown_table() -> str:
    """The agent's flags as docs/operations.md shows them, from the parser itself."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_agent_arguments(parser, {})
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if not flags or flags[0] == "--help":
            continue
        flag = flags[0]
        if isinstance(action, argparse._StoreTrueAction):
            default = "off"
        elif action.default in (None, ""):
            default = "—"
        else:
            default = f"`{action.default}`"
        meaning = (action.help or "").removesuffix(f" [env {env_name(flag)}]")
        if action.choices:
            meaning += f" (one of {', '.join(f'`{c}`' for c in action.choices)})"
        rows.append(
            f"| `{flag}` | `{env_name(flag)}` | {default} | {meaning.replace('|', '&#124;')} |"
        )
    return "\n".join([TABLE_START, *rows, TABLE_END])
