"""A fixed list of peers (``--peers 198.18.0.2:5051,198.18.0.3:5051``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from p2pull.membership import InvalidPeerAddress, Member, Membership

SOURCE = "static"


def parse_peers(text: str) -> list[Member]:
    """``"h:p,h:p"`` (commas and/or whitespace; IPv6 as ``[h]:p``) -> members, duplicates dropped.

    Raises InvalidPeerAddress (a ValueError) naming the offending entry.
    """
    members: dict[str, Member] = {}
    for entry in text.replace(",", " ").split():
        try:
            member = Member.parse(entry)
        except InvalidPeerAddress as exc:
            raise InvalidPeerAddress(f"bad entry {entry!r} in peer list: {exc}") from None
        members.setdefault(member.node_id, member)
    return list(members.values())


async def run_static(
    membership: Membership,
    peers: Iterable[Member],
    *,
    clock: Callable[[], float] = trio.current_time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish ``peers`` as the "static" view, then hold it until cancelled (then withdraw it)."""
    membership.update_source(SOURCE, peers, now=clock())
    try:
        task_status.started()
        await trio.sleep_forever()
    finally:
        membership.update_source(SOURCE, (), now=clock())


class StaticDiscovery:
    """``run_static`` as a ``Discovery`` object."""

    source = SOURCE

    def __init__(
        self,
        membership: Membership,
        peers: Iterable[Member],
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.membership = membership
        self.peers = list(peers)
        self.clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await run_static(self.membership, self.peers, clock=self.clock, task_status=task_status)
