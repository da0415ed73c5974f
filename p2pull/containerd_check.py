"""Does containerd's CRI plugin read the hosts.toml files that point it at the agent?

containerd uses a mirror only through ``certs.d/<registry>/hosts.toml``, and reads those only
when the CRI plugin's registry ``config_path`` names their directory. containerd 1.6's built-in
default is ``config_path = ""``: a node image that does not set it never asks the agent, and
nothing fails (pulls simply go to the origin). containerd 2.x (config ``version = 3``) keeps the
setting under ``[plugins."io.containerd.cri.v1.images".registry]``, and from 2.1 its CRI pulls
through the transfer service unless ``use_local_image_pull = true`` is set there; pulls through
the transfer service have been reported not to use the mirror (spegel-org/spegel#1272).

:func:`check_text` judges a config (pure); :func:`inspect` finds one: a given file, or with
``auto`` the host's file as mounted into the agent's pod, the node's own, then
``containerd config dump`` (defaults included) where the binary is installed.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

__all__ = ["AUTO_PATHS", "ContainerdCheck", "State", "check_text", "inspect"]

AUTO_PATHS = (Path("/host/etc/containerd/config.toml"), Path("/etc/containerd/config.toml"))
DUMP_TIMEOUT = 10.0
V3_DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"  # containerd 2.x default


class State(enum.Enum):
    OK = "ok"
    CONFIG_PATH_UNSET = "config_path_unset"
    TRANSFER_SERVICE = "transfer_service"
    UNREADABLE = "unreadable"
    NOT_FOUND = "not_found"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class ContainerdCheck:
    state: State
    source: str  # where the config came from: a path, "containerd config dump" or "-"
    config_path: str | None = None
    detail: str = ""  # what is wrong and what to do, for the log and `p2pull status`

    @property
    def uses_mirror(self) -> bool:
        return self.state is State.OK


def _table(tree: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        value = tree.get(key)
        if not isinstance(value, dict):
            return {}
        tree = value
    return tree


def check_text(text: str, *, source: str) -> ContainerdCheck:
    """Judge a containerd ``config.toml`` (a file as written, or ``containerd config dump``)."""
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return ContainerdCheck(State.UNREADABLE, source, detail=f"not TOML: {exc}")
    version = config.get("version", 1)
    plugins = _table(config, "plugins")
    if version == 3:
        images = _table(plugins, "io.containerd.cri.v1.images")
        path = _table(images, "registry").get("config_path", V3_DEFAULT_CONFIG_PATH)
        section = '[plugins."io.containerd.cri.v1.images".registry]'
        if path and images.get("use_local_image_pull") is not True:
            return ContainerdCheck(
                State.TRANSFER_SERVICE,
                source,
                str(path),
                "containerd 2.1 and later pull through the transfer service unless "
                '[plugins."io.containerd.cri.v1.images"] sets use_local_image_pull = true; '
                "set it and restart containerd (harmless on 2.0)",
            )
    else:
        cri = _table(plugins, "io.containerd.grpc.v1.cri") or _table(plugins, "cri")
        path = _table(cri, "registry").get("config_path", "")
        section = '[plugins."io.containerd.grpc.v1.cri".registry]'
    if not isinstance(path, str) or not path:
        return ContainerdCheck(
            State.CONFIG_PATH_UNSET,
            source,
            detail=f"containerd reads no hosts.toml, so it never asks the agent: set "
            f'config_path = "/etc/containerd/certs.d" under {section} and restart containerd',
        )
    return ContainerdCheck(State.OK, source, path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _dump(binary: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, "config", "dump"], capture_output=True, text=True, timeout=DUMP_TIMEOUT
    )


async def inspect(where: str) -> ContainerdCheck:
    """``where``: ``off``, ``auto``, or the path of a containerd config.toml."""
    if where == "off":
        return ContainerdCheck(State.OFF, "-", detail="not checked (--check-containerd off)")
    paths = AUTO_PATHS if where == "auto" else (Path(where),)
    for path in paths:
        try:
            text = await trio.to_thread.run_sync(_read, path)
        except OSError as exc:
            return ContainerdCheck(State.UNREADABLE, str(path), detail=f"cannot read: {exc}")
        if text is not None:
            return check_text(text, source=str(path))
    binary = shutil.which("containerd") if where == "auto" else None
    if binary is None:
        return ContainerdCheck(
            State.NOT_FOUND,
            ", ".join(str(p) for p in paths),
            detail="no containerd config found: mount the node's /etc/containerd at "
            "/host/etc/containerd (deploy/daemonset.yaml does) or pass --check-containerd PATH",
        )
    try:
        done = await trio.to_thread.run_sync(_dump, binary)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ContainerdCheck(State.UNREADABLE, "containerd config dump", detail=str(exc))
    if done.returncode != 0:
        return ContainerdCheck(
            State.UNREADABLE, "containerd config dump", detail=done.stderr.strip()[:500]
        )
    return check_text(done.stdout, source="containerd config dump")
