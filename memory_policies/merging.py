"""Bookkeeping for policies whose entries may stand for several frames (see :class:`~memory_policies.Merge`).

A merged entry is named by one of its member frames, the one nearest the members' weighted centre:
member sets are disjoint, so the name never collides with another entry, and reading the entry at
that frame's position keeps positions distinct and in temporal order.
"""

from __future__ import annotations

from memory_policies.base import ARCHIVE, REGIONS, MemoryState, Merge


def members(state: MemoryState, entry: int) -> list[int]:
    """The frames an entry stands for (itself, unless it is a merge)."""
    return state.members.get(entry, [entry])


def merge(state: MemoryState, sources: list[int], weights: list[float] | None = None, pool: int = 1) -> int:
    """Ask storage to replace stored entries ``sources`` by their weighted combination; returns its name.

    ``weights`` default to each source's member count, so a merge of merges is the plain mean of all
    its frames. The new entry takes the place of the sources in every region that held them. ``pool``
    then averages ``pool x pool`` token windows (see :class:`Merge`); entries already pooled or pruned
    cannot be merged again (their rows no longer line up with a frame's grid cells).
    """
    reduced = [s for s in sources if s in state.pooled or s in state.tokens]
    if reduced:
        raise ValueError(f"entries {reduced} hold fewer tokens than a frame and cannot be merged again")
    counts = [len(members(state, s)) for s in sources]
    raw = [float(c) for c in counts] if weights is None else list(weights)
    total = sum(raw)
    weights = [w / total for w in raw]
    frames = [m for s in sources for m in members(state, s)]
    per_frame = [w / c for w, c in zip(weights, counts) for _ in range(c)]
    centre = sum(f * w for f, w in zip(frames, per_frame))
    entry = min(frames, key=lambda f: (abs(f - centre), f))
    state.merges.append(Merge(entry, tuple(sources), tuple(weights), pool))
    for source in sources:
        state.members.pop(source, None)
    if len(frames) > 1:
        state.members[entry] = sorted(frames)
    if pool > 1:
        state.pooled[entry] = pool
    gone = set(sources)
    for name in (*REGIONS, ARCHIVE):
        region = state.regions[name]
        if gone & set(region):
            at = min(i for i, f in enumerate(region) if f in gone)
            region[:] = [f for f in region if f not in gone]
            region.insert(at, entry)
    return entry
