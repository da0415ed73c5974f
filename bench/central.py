"""The "central cache" strategy of the swarm benchmark: one pull-through cache for the cluster.

docker-registry 2.8 (distribution) in proxy mode (``proxy: remoteurl: <origin>``) runs on the
first node; every node, that one included, pulls the blobs through it at once. This is the
"Harbor proxy cache" tier: the cache's own link carries the image to every node, and concurrent
misses for one blob are not coalesced (distribution 2.8's proxy blob store starts one background
copy into its store and streams every client that misses before it lands straight from the
origin), so the origin still sends the blob about N + 1 times in a storm.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from tests.netns import Host, Network

CACHE_PORT = 5000


def cache_config(workdir: Path, *, host: Host, origin_url: str) -> Path:
    """A docker-registry config: filesystem store under ``workdir``, proxy to ``origin_url``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "cache.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {workdir / 'cache-data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {host.ip}:{CACHE_PORT}\n  secret: swarm-bench-central-cache\n"
        f"proxy:\n  remoteurl: {origin_url}\n"
    )
    return config


async def start_cache(
    net: Network,
    host: Host,
    *,
    workdir: Path,
    origin_url: str,
    log: Path,
    env: dict[str, str],
) -> tuple[trio.Process, str]:
    """Start the pull-through cache in ``host``'s namespace; (process, base URL) once it answers
    ``GET /v2/``. The harness kills it at teardown."""
    config = cache_config(workdir, host=host, origin_url=origin_url)
    with log.open("wb") as err:
        process = await net.start(
            host, "docker-registry", "serve", str(config),
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    url = f"http://{host.ip}:{CACHE_PORT}"
    with trio.fail_after(30):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"docker-registry exited {process.returncode}; see {log}")
            probe = await net.run(
                host, "curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                f"{url}/v2/", check=False,
            )  # fmt: skip
            if probe.stdout.strip() == b"200":
                return process, url
            await trio.sleep(0.2)
