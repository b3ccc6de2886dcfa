"""What history a streaming video model keeps, and at which positions it sees it.

A policy is stateless configuration. Everything that changes while a video streams lives in a
:class:`MemoryState` the policy creates per video, so one policy object serves a whole batch, a
rollout and a full-sequence mask alike. All quantities are in latent frames.

The life of one chunk, as a caller drives it:

1. ``view = policy.read(state)`` - the frames the next query chunk attends to and their positions;
2. the caller runs its model on the chunk, then a clean refresh pass that yields per-frame summaries;
3. ``policy.commit(state, summaries)`` - the policy decides which frames each region keeps.

Because the frame decisions are plain Python over frame indices, the same code renders a
full-sequence attention mask (:meth:`MemoryPolicy.frame_mask`) that agrees with streaming by
construction, and tests can compare both paths.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch

PositionMode = Literal["absolute", "bounded", "true_time"]
POSITION_MODES: tuple[str, ...] = ("absolute", "bounded", "true_time")
REGIONS: tuple[str, ...] = ("sink", "slow", "fast")
#: Held in storage but not attended: candidates a retrieving policy may bring back into ``slow``.
ARCHIVE = "archive"


SummaryReduce = Literal["mean_key", "token_keys"]


@dataclass(frozen=True)
class SummarySpec:
    """Which keys summarise a frame: their mean over tokens (paper Eq. 7) or all tokens flattened
    (keeps the spatial layout, which separates scenes better on small models), from one layer or
    averaged over all (``layer=None``)."""

    reduce: SummaryReduce = "mean_key"
    layer: int | None = None


@dataclass(frozen=True)
class Merge:
    """Storage replaces ``sources`` (entries stored before this commit) by one entry ``entry`` holding
    their keys and values combined with ``weights`` (summing to 1).

    ``entry`` is a frame index, which is the entry's position rule: it is read at the position that
    frame would have, so positions stay distinct and ordered. It may be one of the sources (the slot
    is then reused). Frame masks cannot express a weighted combination, so merging policies only
    stream (:meth:`MemoryPolicy.frame_mask` refuses them).
    """

    entry: int
    sources: tuple[int, ...]
    weights: tuple[float, ...]
    #: then average each ``pool x pool`` window of the token grid into one token (1: keep every token);
    #: the pooled token takes the row, hence the spatial RoPE position, of its window's
    #: :func:`pooled_rows` cell, and the other rows of the entry are no longer attended
    pool: int = 1

    def __post_init__(self) -> None:
        if self.pool < 1:
            raise ValueError(f"merge pool must be >= 1, got {self.pool}")
        least = 1 if self.pool > 1 else 2
        if len(self.sources) != len(self.weights) or len(self.sources) < least:
            raise ValueError(f"a merge needs >= {least} sources with one weight each (pool={self.pool}), "
                             f"got {self.sources}, {self.weights}")
        if abs(sum(self.weights) - 1.0) > 1e-6 or min(self.weights) < 0:
            raise ValueError(f"merge weights must be >= 0 and sum to 1, got {self.weights}")


@dataclass(frozen=True)
class AttentionSpec:
    """Ask the model for per-frame attention statistics at every commit: the softmax attention mass
    that the committed chunk's queries (clean refresh pass, heads and query tokens averaged) put on
    each attended memory frame, measured in one ``layer`` (negative counts from the last).
    ``per_token``: the mass on each token row of each frame instead (``[frames, tokens_per_frame]``),
    for policies that keep a subset of a frame's tokens (see :attr:`MemoryState.tokens`)."""

    layer: int = 0
    per_token: bool = False


@dataclass
class MemoryState:
    """Per-video memory bookkeeping: named regions of absolute frame indices.

    ``regions`` maps ``sink`` / ``slow`` / ``fast`` to frame indices in insertion order. A frame may
    sit in two regions at once (a slow frame still inside the fast window); :meth:`kept_frames`
    deduplicates, so storage holds each frame once. ``extra`` is policy-private state (for example
    the previous frame's summary for surprisal) that must travel with the video.
    """

    chunk_frames: int
    regions: dict[str, list[int]] = field(default_factory=lambda: {name: [] for name in (*REGIONS, ARCHIVE)})
    frames_committed: int = 0
    chunks_committed: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    #: merges the last commit asked storage to perform (see :class:`Merge`); replaced at every commit
    merges: list[Merge] = field(default_factory=list)
    #: entry -> the frames it stands for, for entries that merged several frames (all others: itself)
    members: dict[int, list[int]] = field(default_factory=dict)
    #: attention mass each attended frame received from the last committed chunk, when the policy asks
    attention: dict[int, float] = field(default_factory=dict)
    #: the same per token row ``[tokens_per_frame]``, when the policy asks ``per_token`` statistics
    token_attention: dict[int, torch.Tensor] = field(default_factory=dict)
    #: entry -> the token rows it still holds, for entries that keep fewer than a frame's tokens (all
    #: others hold every row). Rows are grid cells, so a kept token keeps its spatial RoPE position, and
    #: its entry's temporal position; a policy may only shrink a set (storage cannot restore a dropped row)
    tokens: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: entry -> the spatial pooling factor its merge applied (see :class:`Merge`); absent means 1
    pooled: dict[int, int] = field(default_factory=dict)
    #: the token grid ``(h, w)`` of one frame, when storage knows it (:class:`KVMemory` sets it): policies
    #: that keep entries smaller than a frame count their tokens with it
    grid: tuple[int, int] | None = None

    def entry_tokens(self, entry: int) -> int:
        """Tokens entry ``entry`` holds (a frame's ``h * w`` unless pruned or pooled); needs :attr:`grid`."""
        if self.grid is None:
            raise ValueError("counting an entry's tokens needs the frame's token grid (MemoryState.grid)")
        if entry in self.tokens:
            return len(self.tokens[entry])
        return len(pooled_rows(self.grid, self.pooled.get(entry, 1)))

    def kept_frames(self) -> list[int]:
        """Distinct frames attended, in temporal order (sink first, as it holds the first frames)."""
        return sorted({frame for name in REGIONS for frame in self.regions[name]})

    def stored_frames(self) -> list[int]:
        """Distinct entries storage must hold: the attended ones and the ``archive``."""
        return sorted({frame for name in (*REGIONS, ARCHIVE) for frame in self.regions.get(name, ())})

    def clone(self) -> MemoryState:
        return copy.deepcopy(self)


@dataclass(frozen=True)
class MemoryView:
    """What the next query chunk sees: memory frames with their positions, then its own positions."""

    frames: list[int]
    positions: list[int]
    query_frames: list[int]
    query_positions: list[int]


class MemoryPolicy(ABC):
    """Base class of every memory policy (see ``docs/memory_policies.md``).

    Subclasses implement :meth:`budget` and :meth:`_update_regions`; reading, positions, masks and
    validation are shared so that every policy obeys the same contract.
    """

    def __init__(
        self, sink: int = 0, position_mode: PositionMode = "absolute", rope_length: int = 21
    ) -> None:
        if sink < 0:
            raise ValueError(f"sink must be >= 0, got {sink}")
        if position_mode not in POSITION_MODES:
            raise ValueError(f"unknown position_mode {position_mode!r}; allowed: {', '.join(POSITION_MODES)}")
        if rope_length < 1:
            raise ValueError(f"rope_length must be >= 1, got {rope_length}")
        self.sink = sink
        self.position_mode: PositionMode = position_mode
        self.rope_length = rope_length

    # ----------------------------------------------------------------- policy-specific decisions
    @abstractmethod
    def budget(self, chunk_frames: int) -> int | None:
        """Most frames the memory ever holds (query chunk excluded); ``None`` means unbounded."""

    @abstractmethod
    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        """Decide region contents after ``new_frames`` (a clean chunk) were appended to the history."""

    def needs_summaries(self) -> bool:
        """Whether :meth:`commit` needs per-frame summaries (the caller can skip computing them)."""
        return False

    def summary_spec(self) -> SummarySpec:
        """How the model should summarise a frame for :meth:`commit` (paper: mean key, all layers)."""
        return SummarySpec()

    def attention_spec(self) -> AttentionSpec | None:
        """Per-frame attention statistics :meth:`commit` needs, or None (the model then computes none)."""
        return None

    def merges_entries(self) -> bool:
        """Whether :meth:`commit` may ask storage to merge entries (see :class:`Merge`)."""
        return False

    def keeps_sub_frames(self) -> bool:
        """Whether entries may hold fewer tokens than a frame (:attr:`MemoryState.tokens`, pooled merges)."""
        return False

    def token_budget(self, chunk_frames: int, grid: tuple[int, int]) -> int | None:
        """Most memory tokens one chunk attends to (query chunk excluded), for frames of ``grid`` tokens.
        Equals ``budget * h * w`` unless entries hold fewer tokens than a frame."""
        budget = self.budget(chunk_frames)
        return None if budget is None else budget * grid[0] * grid[1]

    def storage(self, chunk_frames: int) -> int | None:
        """Most entries storage holds (attended + ``archive``); equals :meth:`budget` unless archiving."""
        return self.budget(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        """Flat, primitive settings for TensorBoard's HParams tab; subclasses add their own."""
        return {
            # through short-name aliases
            "memory/policy": getattr(type(self), "_alias_of", type(self)).__name__,
            "memory/sink": self.sink,
            "memory/position_mode": self.position_mode,
            "memory/rope_length": self.rope_length,
        }

    @property
    def fixed_positions(self) -> bool:
        """Whether a kept frame is always read at the position it had as a query (absolute mode).

        Then only the query moves from chunk to chunk, and a streaming model may store keys already
        rotated and never rotate the cache again. Bounded and true-time positions re-pack the history
        every chunk, so their keys must be rotated when read. A subclass that overrides
        :meth:`positions` must keep this property true to what it returns.
        """
        return self.position_mode == "absolute"

    def span(self, chunk_frames: int) -> int | None:
        """Most frames one query chunk attends to, itself included (the positional range it needs)."""
        budget = self.budget(chunk_frames)
        return None if budget is None else budget + chunk_frames

    # ----------------------------------------------------------------- shared machinery
    def new_state(self, chunk_frames: int) -> MemoryState:
        """Fresh per-video state; validates that this policy can serve chunks of ``chunk_frames``."""
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.validate(chunk_frames)
        return MemoryState(chunk_frames=chunk_frames)

    def validate(self, chunk_frames: int) -> None:
        """Raise a clear error when the budget cannot work with this chunk size and position range."""
        span = self.span(chunk_frames)
        if self.position_mode != "absolute":
            if span is None:
                raise ValueError(
                    f"{type(self).__name__} is unbounded, so position_mode={self.position_mode!r} cannot "
                    "keep positions in range; use position_mode='absolute'"
                )
            if span > self.rope_length:
                raise ValueError(
                    f"{type(self).__name__} attends to up to {span} frames (memory {span - chunk_frames} + "
                    f"chunk {chunk_frames}) but rope_length is {self.rope_length}: positions would collide; "
                    f"raise rope_length to >= {span} or shrink the budget"
                )

    def commit(self, state: MemoryState, summaries: torch.Tensor | None = None,
               attention: torch.Tensor | None = None) -> None:
        """Record one clean chunk (the next ``chunk_frames`` frames) and update the regions.

        ``summaries`` is ``[chunk_frames, dim]``: one vector per new frame (e.g. its mean key).
        ``attention`` is ``[n]``: the mass the chunk put on each of the ``n`` frames it attended to
        (those of :meth:`read`, in order), for policies with an :meth:`attention_spec`.
        """
        chunk = state.chunk_frames
        if summaries is not None and (summaries.ndim != 2 or summaries.shape[0] != chunk):
            raise ValueError(
                f"summaries must have shape [chunk_frames={chunk}, dim], got {tuple(summaries.shape)}"
            )
        if summaries is None and self.needs_summaries():
            raise ValueError(f"{type(self).__name__} needs per-frame summaries in commit(); got None")
        state.attention = self._attention_by_frame(state, attention)
        state.merges = []
        new_frames = list(range(state.frames_committed, state.frames_committed + chunk))
        sink = state.regions["sink"]
        for frame in new_frames:
            if len(sink) < self.sink:
                sink.append(frame)
        self._update_regions(state, new_frames, summaries)
        if state.tokens or state.pooled:  # forget the token sets of entries no longer stored
            stored = set(state.stored_frames())
            for reduced in (state.tokens, state.pooled):
                for entry in [e for e in reduced if e not in stored]:
                    del reduced[entry]
        state.frames_committed += chunk
        state.chunks_committed += 1

    def _attention_by_frame(self, state: MemoryState, attention: torch.Tensor | None) -> dict[int, float]:
        if self.attention_spec() is None:
            return {}
        frames = state.kept_frames()
        if attention is None:
            raise ValueError(
                f"{type(self).__name__} needs per-frame attention statistics in commit(); got None"
            )
        per_token = self.attention_spec().per_token  # type: ignore[union-attr]
        if attention.ndim != 1 + per_token or attention.shape[0] != len(frames):
            wanted = f"[{len(frames)}, tokens_per_frame]" if per_token else f"[{len(frames)}]"
            raise ValueError(f"attention must have shape {wanted} (one value per attended frame"
                             f"{' and token row' if per_token else ''}), got {tuple(attention.shape)}")
        if per_token:
            state.token_attention = dict(zip(frames, attention.float().unbind(0)))
            attention = attention.sum(-1)
        return dict(zip(frames, attention.float().tolist()))

    def read(self, state: MemoryState) -> MemoryView:
        """Frames and positions for the next query chunk (the ``chunk_frames`` frames after the history)."""
        frames = state.kept_frames()
        start = state.frames_committed
        query = list(range(start, start + state.chunk_frames))
        positions = self.positions(state, frames, query)
        return MemoryView(frames, positions[: len(frames)], query, positions[len(frames):])

    def positions(self, state: MemoryState, frames: list[int], query: list[int]) -> list[int]:
        """Temporal RoPE positions for ``frames + query`` under this policy's position mode."""
        return memory_positions(frames, query, state.regions["sink"], self.rope_length, self.position_mode)

    def context_positions(self, frames: list[int], history_frames: int, target_frames: int,
                          chunk_frames: int) -> list[int]:
        """Positions of a teacher's or critic's ``[context | target]`` sequence, in the student's layout.

        ``frames`` is what this memory held once ``history_frames`` frames were committed; the target
        follows the history. The context frames and the target's first chunk get exactly the positions
        the student read them at (:meth:`read`), and the rest of the target continues one position per
        frame, so Contextual DMD scores the student's context in the layout the student used. Built on
        :meth:`positions`, so a subclass that overrides it is honoured here too.
        """
        if target_frames < chunk_frames:
            raise ValueError(f"target_frames={target_frames} is shorter than chunk_frames={chunk_frames}")
        state = MemoryState(chunk_frames=chunk_frames, frames_committed=history_frames)
        state.regions["sink"] = list(range(min(self.sink, history_frames)))
        query = list(range(history_frames, history_frames + chunk_frames))
        read = self.positions(state, frames, query)
        if read[0] < 0 or any(a >= b for a, b in pairwise(read)):
            raise ValueError(
                f"{len(frames)} context frames + a {chunk_frames}-frame chunk do not fit "
                f"rope_length={self.rope_length} (positions {read}); show fewer frames or raise it"
            )
        return read + [read[-1] + 1 + i for i in range(target_frames - chunk_frames)]

    def frame_mask(self, num_frames: int, chunk_frames: int, summaries: torch.Tensor | None = None,
                   attention: Callable[[MemoryView], torch.Tensor] | None = None,
                   state: MemoryState | None = None) -> torch.Tensor:
        """Boolean ``[num_frames, num_frames]``: query frame i may attend to key frame j.

        Rendered by replaying the streaming decisions, so a masked full-sequence forward sees exactly
        what the chunk-by-chunk path sees. ``summaries`` is ``[num_frames, dim]`` when the policy
        needs them; ``attention(view)`` gives a chunk's per-frame attention statistics when the policy
        needs those; ``state`` is the fresh state to replay from when the caller prepared one (an
        informed :class:`~memory_policies.Oracle`). ``num_frames`` must be a multiple of ``chunk_frames``. A
        policy that merges entries cannot be rendered: a boolean mask cannot attend to a weighted combination.
        """
        if self.merges_entries() or self.keeps_sub_frames():
            raise ValueError(f"{type(self).__name__} merges entries or keeps entries smaller than a frame, "
                             "which a frame mask cannot express; stream it chunk by chunk")
        if num_frames % chunk_frames:
            raise ValueError(f"num_frames={num_frames} is not a multiple of chunk_frames={chunk_frames}")
        if summaries is not None and summaries.shape[0] != num_frames:
            raise ValueError(f"summaries must have {num_frames} rows, got {tuple(summaries.shape)}")
        mask = torch.zeros(num_frames, num_frames, dtype=torch.bool)
        state = state or self.new_state(chunk_frames)
        for start in range(0, num_frames, chunk_frames):
            view = self.read(state)
            rows = slice(start, start + chunk_frames)
            mask[rows, view.frames] = True
            mask[rows, start:start + chunk_frames] = True
            chunk_summaries = None if summaries is None else summaries[start:start + chunk_frames]
            if attention is None:
                self.commit(state, chunk_summaries)
            else:
                self.commit(state, chunk_summaries, attention(view))
        return mask

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


def memory_positions(frames: list[int], query: list[int], sink_frames: list[int], rope_length: int,
                     mode: PositionMode) -> list[int]:
    """Temporal RoPE positions for ``frames + query`` (both sorted frame indices), the one definition.

    ``absolute``: the frame indices. ``bounded`` (paper Eq. 8): sink frames keep their own indices;
    every other frame packs into a contiguous run that ends at the anchor (the last query frame, capped
    at ``rope_length - 1``), so positions never leave the trained range. ``true_time``: real distances
    to the query where they fit; older frames only move up as far as needed to stay distinct, ordered
    and above the bounded run.
    """
    everything = frames + query
    if mode == "absolute":
        return everything
    sink_set = set(sink_frames)
    anchor = min(query[-1], rope_length - 1)
    others = [f for f in everything if f not in sink_set]
    first = anchor - (len(others) - 1)
    packed = {f: first + j for j, f in enumerate(others)}
    if mode == "true_time":
        ceiling = anchor + 1
        for f in reversed(others):
            ceiling = max(packed[f], min(anchor - (query[-1] - f), ceiling - 1))
            packed[f] = ceiling
    return [f if f in sink_set else packed[f] for f in everything]


def pooled_rows(grid: tuple[int, int], pool: int) -> list[int]:
    """The token row each ``pool x pool`` window of a ``grid`` keeps after pooling (row-major windows,
    edge windows cut by the grid): the window's cell nearest its centre, the upper-left one on a tie, so
    a pooled token is read at a spatial RoPE position inside the area it averages."""
    h, w = grid
    rows = []
    for top in range(0, h, pool):
        for left in range(0, w, pool):
            centre_h = top + (min(pool, h - top) - 1) // 2
            centre_w = left + (min(pool, w - left) - 1) // 2
            rows.append(centre_h * w + centre_w)
    return rows


def check_recent_window(name: str, size: int, chunk_frames: int) -> None:
    """A recent window counts the query chunk, so it must hold at least one chunk: policies call this
    from ``validate`` with their window's argument name and size."""
    if size < chunk_frames:
        raise ValueError(f"{name}={size} must be >= chunk_frames={chunk_frames}: it counts the query chunk")


def recent_frames(new_frames: list[int], count: int) -> list[int]:
    """The ``count`` most recent frames of the history once ``new_frames`` are appended."""
    end = new_frames[-1] + 1
    return list(range(max(0, end - count), end))
