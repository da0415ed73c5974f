"""The tree a blob's members form with ``SessionConfig.fanout``: each member asks its parent
(and trusts its chunk hashes) instead of the seed, so nobody has more than about twice
``fanout`` askers.

Pure: every member computes the same tree from the same HRW ranking. With racks known, each
rack is a subtree: the seed's rack hangs from the seed; every other rack's first member in HRW
order (its root) is in a tree of roots under the seed, and the rest of the rack hangs from its
root. A rack then takes each chunk across about once, through its root, and a member is handed
peers of its own rack (its parent's askers). Without racks the tree is the ranking itself: the
seed, then ``fanout`` children, ``fanout`` each of theirs, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

M = TypeVar("M")


def parent(ranked: Sequence[M], place: int, fanout: int, rack: Callable[[M], str]) -> M:
    """The parent of ``ranked[place]`` (``ranked[0]``, the seed, is its own)."""
    if fanout < 1:
        raise ValueError(f"fanout must be at least 1, got {fanout}")
    seed = ranked[0]
    if place == 0:
        return seed
    home, mine = rack(seed), rack(ranked[place])
    group = [m for m in ranked[1 : place + 1] if rack(m) == mine]  # my rack's members before me
    if mine == home:
        return _heap_parent([seed, *group], len(group), fanout)
    if len(group) > 1:  # not my rack's root: under it
        return _heap_parent(group, len(group) - 1, fanout)
    roots, seen = [seed], {home}
    for member in ranked[1 : place + 1]:
        where = rack(member)
        if where not in seen:
            seen.add(where)
            roots.append(member)
    return _heap_parent(roots, len(roots) - 1, fanout)


def _heap_parent(tree: Sequence[M], index: int, fanout: int) -> M:
    """In ``tree`` laid out as a heap of ``fanout`` children per node, the parent of
    ``tree[index]`` (index > 0)."""
    return tree[(index - 1) // fanout]


__all__ = ["parent"]
