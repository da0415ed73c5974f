"""The ``p2pull`` command: ``agent``, ``containerd-config`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from agent.admin_cli import add_admin_commands, run_prefetch, run_purge, run_status
from agent.config import ConfigError, add_agent_arguments, config_from_args, env_name
from agent.logs import setup_logging
from p2pull.errors import P2pullError

log = logging.getLogger("p2pull")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pull",
        description="Peer-to-peer layer distribution agent for containerd.",
        allow_abbrev=False,  # `--mirror` must not silently mean `--mirror-addr`
    )
    commands = parser.add_subparsers(dest="command", required=True)

    agent = commands.add_parser(
        "agent", help="run the node agent (registry mirror)", allow_abbrev=False
    )
    add_agent_arguments(agent, os.environ)

    cfg = commands.add_parser(
        "containerd-config",
        help="write containerd hosts.toml files that use the agent as mirror",
        allow_abbrev=False,
    )
    cfg.add_argument(
        "--mirror",
        default=os.environ.get(env_name("--mirror"), "http://127.0.0.1:5050"),
        help=f"the agent's mirror URL [env {env_name('--mirror')}]",
    )
    cfg.add_argument(
        "--registry",
        action="append",
        default=None,
        help="registry host to configure (repeatable; env: comma-separated) "
        f"[env {env_name('--registry')}]",
    )
    cfg.add_argument(
        "--server",
        action="append",
        default=[],
        help="REGISTRY=URL: the origin URL written as `server` (default https://REGISTRY)",
    )
    cfg.add_argument(
        "--dir",
        default=os.environ.get(env_name("--dir"), "/etc/containerd/certs.d"),
        help=f"containerd's certs.d directory [env {env_name('--dir')}]",
    )
    cfg.add_argument(
        "--remove", action="store_true", help="undo: restore the backups / drop the agent entry"
    )

    add_admin_commands(commands)

    demo = commands.add_parser("demo", help="a local pull storm on loopback", allow_abbrev=False)
    demo.add_argument("--nodes", type=_count(1, 64), default=4, help="agents on loopback (1-64)")
    demo.add_argument(
        "--clients", type=_count(1, 64), default=2, help="simultaneous pulls per node (1-64)"
    )
    demo.add_argument("--size", default="256MiB", help="image size (split over its layers)")
    demo.add_argument("--layers", type=_count(1, 128), default=4, help="number of layers (1-128)")
    demo.add_argument(
        "--rate", default="100MiB", help="origin rate per stream, per second (0: none)"
    )
    demo.add_argument("--data-dir", default=None, help="store directory (default: a temp dir)")
    return parser


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number within [low, high]."""

    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number {low}-{high}, got {text!r}")
        return int(text)

    return parse


def _run_containerd_config(args: argparse.Namespace) -> int:
    from p2pull.containerd import apply, remove

    raw = args.registry or os.environ.get(env_name("--registry"), "").split(",")
    registries = [r.strip() for item in raw for r in item.split(",") if r.strip()]
    if not registries:
        raise ConfigError("containerd-config: give at least one --registry")
    servers: dict[str, str] = {}
    for item in args.server:
        registry, sep, url = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ConfigError(f"--server: expected REGISTRY=http(s)://..., got {item!r}")
        servers[registry] = url
    certs_dir = Path(args.dir)
    if args.remove:
        paths = remove(certs_dir, registries=registries)
        for path in paths:
            print(f"restored {path}")
    else:
        paths = apply(certs_dir, registries=registries, mirror_url=args.mirror, server_urls=servers)
        for path in paths:
            print(f"wrote {path}")
    return 0


async def _run_agent(args: argparse.Namespace) -> None:
    from agent.service import Agent

    config = config_from_args(args, os.environ)
    setup_logging(level=config.log_level, fmt=config.log_format)
    agent = Agent(config)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(agent.run)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _unwrap(error: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, as trio's nurseries deliver it."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BaseExceptionGroup as group:
        error = _unwrap(group)
        if isinstance(error, ConfigError | P2pullError):
            print(f"p2pull {args.command}: {error}", file=sys.stderr)
            return 2
        if isinstance(error, KeyboardInterrupt):
            return 130
        raise


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "agent":
            trio.run(_run_agent, args)
            return 0
        if args.command == "containerd-config":
            return _run_containerd_config(args)
        if args.command in ("status", "prefetch", "purge"):
            runner = {"status": run_status, "prefetch": run_prefetch, "purge": run_purge}
            return trio.run(runner[args.command], args)
        if args.command == "demo":
            from agent.demo import run_demo

            return trio.run(run_demo, args)
    except (ConfigError, P2pullError) as exc:
        print(f"p2pull {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
