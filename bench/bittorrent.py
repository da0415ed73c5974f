"""The "bittorrent" strategy of the swarm benchmark: libtorrent leechers, the origin seeding.

The origin host runs opentracker (``-w`` whitelist holding only this torrent's info-hash) and a
libtorrent seeder of the image's blobs (one v1 private torrent, one file per blob); every node
runs a libtorrent leecher (``bench/bt_node.py`` under the system Python that has Debian's
python3-libtorrent) that starts at the common instant, reports when it holds every byte, then
keeps seeding. Content is the TestOrigin's own (same seed), checked against its digests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import trio

from p2pull.testing.serve import make_content
from tests.netns import Host, Network, read_json_line

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).resolve().parent / "bt_node.py"
TRACKER_PORT = 6969


def bittorrent_missing() -> str | None:
    """Why the strategy cannot run here, or None."""
    if shutil.which("opentracker") is None:
        return "opentracker is not installed (apt-get install opentracker)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return f"{SYSTEM_PYTHON} cannot import libtorrent (apt-get install python3-libtorrent)"
    return None


class Swarm:
    """Tracker + seeder on the origin host; :meth:`leecher_argv` for each node."""

    def __init__(self, workdir: Path, *, size: int, layers: int, piece_size: int) -> None:
        self.workdir = workdir
        self.size, self.layers, self.piece_size = size, layers, piece_size
        self.torrent = workdir / "image.torrent"
        self.seeder: trio.Process | None = None

    async def start(
        self,
        net: Network,
        origin: Host,
        *,
        digests: list[str],
        logdir: Path,
        env: dict[str, str],
    ) -> None:
        content = self.workdir / "seed" / "image"
        content.mkdir(parents=True)
        parts = make_content(self.size, seed=1, layers=self.layers)
        for digest, part in zip(digests, parts, strict=True):
            if f"sha256:{hashlib.sha256(part).hexdigest()}" != digest:
                raise RuntimeError(f"bittorrent: regenerated content does not match {digest}")
            (content / digest.removeprefix("sha256:")).write_bytes(part)
        del parts
        tracker = f"http://{origin.ip}:{TRACKER_PORT}/announce"
        made = await trio.run_process(
            [SYSTEM_PYTHON, str(SCRIPT), "create", str(content), tracker,
             str(self.piece_size), str(self.torrent)],
            capture_stdout=True, env=env,
        )  # fmt: skip
        info_hash = json.loads(made.stdout)["info_hash"]
        (self.workdir / "whitelist").write_text(info_hash + "\n")
        # opentracker chroots into its working directory and drops to "nobody", then reads the
        # whitelist from there: the directory must be searchable by that user.
        self.workdir.chmod(0o755)
        (self.workdir / "whitelist").chmod(0o644)
        with (logdir / "tracker.log").open("wb") as err:
            await net.start(
                origin, "opentracker", "-i", origin.ip, "-p", str(TRACKER_PORT),
                "-P", str(TRACKER_PORT), "-d", ".", "-w", "whitelist",
                env=env, stdout=err, stderr=err, cwd=str(self.workdir),
            )  # fmt: skip
        await trio.sleep(0.5)  # opentracker has no readiness signal; it binds at once
        with (logdir / "seeder.log").open("wb") as err:
            self.seeder = await net.start(
                origin, SYSTEM_PYTHON, str(SCRIPT), "seed", str(self.torrent),
                str(content.parent), origin.ip, env=env, stderr=err,
            )  # fmt: skip
        with trio.fail_after(60):
            await read_json_line(self.seeder)
        await trio.sleep(1.0)  # its announce reaches the tracker

    def leecher_argv(self, host: Host, start_at: float) -> list[str]:
        save = self.workdir / f"node{host.index}"
        save.mkdir(parents=True, exist_ok=True)
        return [SYSTEM_PYTHON, str(SCRIPT), "leech", str(self.torrent), str(save), host.ip,
                f"{start_at:.3f}"]  # fmt: skip

    async def seeder_sent(self) -> int:
        """Payload bytes the seeder uploaded (it reports on SIGTERM)."""
        assert self.seeder is not None
        self.seeder.terminate()
        with trio.fail_after(10):
            return int((await read_json_line(self.seeder))["bytes_sent"])
