"""``--upstream-policy listed``: an agent fetches only from the registries it was given; a pull
for any other ns gets 404 NAME_UNKNOWN (containerd then goes to that registry itself) and the
agent never contacts it. A real agent, two real test registries on loopback."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import trio

from agent.config import load_agent_config
from agent.service import Agent
from p2pull.testing.origin import TestOrigin

NAME = "team/app"


async def test_listed_policy_serves_listed_registries_and_refuses_the_others(
    tmp_path: Path,
) -> None:
    rng = random.Random(3)
    data, other = rng.randbytes(300_000), rng.randbytes(200_000)
    listed, unlisted = TestOrigin(), TestOrigin()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(listed.run)
            await nursery.start(unlisted.run)
            digest = listed.add_blob(NAME, data)
            other_digest = unlisted.add_blob(NAME, other)  # not cached: it would come from there
            config = load_agent_config(
                [
                    "--mirror-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--standalone",
                    "--data-dir", str(tmp_path / "store"), "--log-format", "text",
                    "--upstream", f"{listed.netloc}={listed.url}", "--upstream-policy", "listed",
                ],
                env={},
            )  # fmt: skip
            ports = await nursery.start(Agent(config).run)
            blobs = f"http://127.0.0.1:{ports.mirror}/v2/{NAME}/blobs"
            async with httpx.AsyncClient() as client:
                served = await client.get(f"{blobs}/{digest}", params={"ns": listed.netloc})
                refused = await client.get(
                    f"{blobs}/{other_digest}", params={"ns": unlisted.netloc}
                )
                head = await client.head(f"{blobs}/{other_digest}", params={"ns": unlisted.netloc})
                manifest = await client.get(
                    f"http://127.0.0.1:{ports.mirror}/v2/{NAME}/manifests/latest",
                    params={"ns": unlisted.netloc},
                )
            nursery.cancel_scope.cancel()
    assert served.status_code == 200 and served.content == data
    assert refused.status_code == 404, refused.text
    assert refused.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert "not a listed upstream" in refused.json()["errors"][0]["message"]
    assert head.status_code == 404 and manifest.status_code == 404
    assert unlisted.requests == []  # never contacted
