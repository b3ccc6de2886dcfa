"""The explicit streaming memory: a policy's decisions plus the K/V tensors they refer to.

One :class:`KVMemory` per batch of videos is handed to the model and back; attention layers never
hold hidden cache state. Keys are stored un-rotated, so positions are chosen at read time by the
policy, except when the policy's positions are fixed (absolute mode: a kept frame is always read at
the position it was written at). Then only the query moves, and keys are stored rotated so the cache
is never rotated again (``store_rotated``). Storage is a fixed pool of slots per video (sized by the
policy budget, grown only for unbounded policies), so per-chunk memory use is bounded by
``budget x tokens_per_frame``.

Per-chunk cost: what a query chunk attends to only changes on :meth:`KVMemory.commit`, so
:meth:`KVMemory.read` is computed once per chunk and reused by the chunk's denoising forwards and its
refresh pass. The model keeps tensors derived from one read (RoPE tables, the gathered and rotated
memory keys) in :attr:`MemoryRead.cache`; they are dropped at the next commit, so at most one such
copy of the attended frames exists besides the slot pool. ``cache_reads=False`` turns all of this
off (every forward re-reads and re-gathers), which is the plain path the tests compare against.

Entries smaller than a frame (a policy's :attr:`~memory_policies.MemoryState.tokens` subsets, pooled
merges) keep their slot and their surviving tokens keep their rows, so a token's row stays its grid
cell and the RoPE tables of a slot serve it unchanged (temporal position of its entry, spatial position
of its cell). The rows an entry no longer holds are masked out of attention by a key-padding mask built
once per read (:attr:`MemoryRead.valid`); memories whose entries are all whole frames build none, so
their attention path is the one without a mask.

Host syncs: index tensors are built from the policy's Python lists and sent to the device in one
transfer per read and one per commit (pinned and non-blocking on CUDA), and no tensor is read back to
the host. The one sync left is the policy's: surprisal admission (``SlowFast``) reads a cosine
similarity on the host once per consolidation step and video.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memory_policies import MemoryPolicy, MemoryState, MemoryView
from memory_policies.base import pooled_rows


@dataclass(frozen=True)
class MemoryRead:
    """What one query chunk attends to, as device tensors (``n`` = most memory frames in the batch).

    ``shared`` is True when every video of the batch attends to the same slots at the same positions
    (always so for data-independent policies, and for surprisal when the decisions agree): the index
    tensors are then one row expanded over the batch and nothing is padded.
    ``cache`` holds tensors the model derives from this read (valid until the next commit).
    """

    views: list[MemoryView]
    slots: torch.Tensor  # [B, n] storage slot of each attended memory frame
    #: [B, n * tokens_per_frame] False where a shorter memory is padded or an entry no longer holds a
    #: token row; None when every attended row is valid
    valid: torch.Tensor | None
    positions: torch.Tensor  # [B, n] temporal RoPE positions of the memory frames
    query_positions: torch.Tensor  # [B, chunk_frames]
    shared: bool = False
    cache: dict[object, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_frames(self) -> int:
        return self.slots.shape[1]


class KVMemory:
    """Per-video memory states of one policy and a slot pool of per-layer keys and values.

    ``states`` are changed by :meth:`commit` only; after editing one by hand, call
    :meth:`invalidate` so that the next :meth:`read` sees the change.

    ``store_rotated``: whether :meth:`commit` receives keys already rotated to their positions, so
    reads use them as they are. Defaults to the policy's ``fixed_positions``; it cannot be set for
    a policy whose positions move, whose keys must be rotated again at every read.

    ``grid``: the ``(h, w)`` token grid of a frame (``h * w = tokens_per_frame``), handed to the policy's
    states; needed by policies that pool entries (:class:`~memory_policies.Merge` ``pool``) or count tokens.
    """

    def __init__(self, policy: MemoryPolicy, batch_size: int, chunk_frames: int, tokens_per_frame: int,
                 num_layers: int, num_heads: int, head_dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, cache_reads: bool = True,
                 store_rotated: bool | None = None, grid: tuple[int, int] | None = None) -> None:
        if grid is not None and grid[0] * grid[1] != tokens_per_frame:
            raise ValueError(
                f"grid {grid} holds {grid[0] * grid[1]} tokens, not tokens_per_frame={tokens_per_frame}"
            )
        if store_rotated and not policy.fixed_positions:
            raise ValueError(f"store_rotated=True needs fixed positions, but {type(policy).__name__} uses "
                             f"position_mode={policy.position_mode!r}; allowed with position_mode='absolute'")
        if store_rotated and policy.merges_entries():
            raise ValueError(f"store_rotated=True cannot hold {type(policy).__name__}'s merged entries: keys "
                             "rotated to different positions do not combine; use store_rotated=False")
        self.policy = policy
        if store_rotated is None:
            store_rotated = policy.fixed_positions and not policy.merges_entries()
        self.store_rotated = store_rotated
        self.chunk_frames = chunk_frames
        self.tokens_per_frame = tokens_per_frame
        self.cache_reads = cache_reads
        self.grid = grid
        self.states: list[MemoryState] = [policy.new_state(chunk_frames) for _ in range(batch_size)]
        for state in self.states:
            state.grid = grid
        storage = policy.storage(chunk_frames)
        capacity = storage if storage is not None else 4 * chunk_frames
        shape = (num_layers, batch_size, max(capacity, 1), tokens_per_frame, num_heads, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self._slot_of: list[dict[int, int]] = [{} for _ in range(batch_size)]
        self._free: list[list[int]] = [list(range(shape[2] - 1, -1, -1)) for _ in range(batch_size)]
        #: per video, the token rows still held by entries smaller than a frame (absent: all rows)
        self._rows: list[dict[int, tuple[int, ...]]] = [{} for _ in range(batch_size)]
        self._read: MemoryRead | None = None

    @property
    def batch_size(self) -> int:
        return len(self.states)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def frames_committed(self) -> int:
        return self.states[0].frames_committed

    def stored_frames(self) -> int:
        """Most frames any video of the batch holds right now."""
        return max(len(slots) for slots in self._slot_of)

    def pool_bytes(self) -> int:
        """Bytes held by the K/V slot pool (bounded by the policy budget)."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def invalidate(self) -> None:
        """Forget the cached read (and what the model derived from it)."""
        self._read = None

    def read(self) -> MemoryRead:
        """What the next query chunk attends to; cached until the next :meth:`commit`."""
        if self._read is not None and self.cache_reads:
            return self._read
        views = [self.policy.read(state) for state in self.states]
        slots = [[self._slot_of[b][f] for f in view.frames] for b, view in enumerate(views)]
        rows = [(s, view.positions, view.query_positions) for s, view in zip(slots, views)]
        shared = all(row == rows[0] for row in rows[1:])
        longest = max(len(s) for s in slots)
        chunk = self.chunk_frames
        if shared:
            rows = rows[:1]
        # One packed [rows, 2n + chunk] index tensor, so one host-to-device transfer per read.
        packed = torch.tensor(
            [
                s + [0] * (longest - len(s)) + pos + [0] * (longest - len(pos)) + query
                for s, pos, query in rows
            ],
            dtype=torch.long,
        ).reshape(len(rows), 2 * longest + chunk)
        packed = _to_device(packed, self.keys.device).expand(self.batch_size, -1)
        valid = None
        if any(rows.keys() & view.frames for rows, view in zip(self._rows, views)):
            valid = _to_device(self._token_mask(views, longest), self.keys.device)
        elif any(len(s) != longest for s in slots):
            lengths = torch.tensor([len(s) for s in slots])
            frames_valid = _to_device(torch.arange(longest)[None] < lengths[:, None], self.keys.device)
            valid = frames_valid.repeat_interleave(self.tokens_per_frame, dim=1)
        read = MemoryRead(
            views=views,
            slots=packed[:, :longest],
            valid=valid,
            positions=packed[:, longest:2 * longest],
            query_positions=packed[:, 2 * longest:],
            shared=shared,
        )
        if self.cache_reads:
            self._read = read
        return read

    def _token_mask(self, views: list[MemoryView], longest: int) -> torch.Tensor:
        """Host ``[B, longest * tokens_per_frame]``: the token rows each video's attended entries hold."""
        mask = torch.zeros(self.batch_size, longest, self.tokens_per_frame, dtype=torch.bool)
        for b, view in enumerate(views):
            mask[b, :len(view.frames)] = True
            for j, frame in enumerate(view.frames):
                rows = self._rows[b].get(frame)
                if rows is not None:
                    mask[b, j] = False
                    mask[b, j, list(rows)] = True
        return mask.flatten(1)

    def gather(self, layer: int, read: MemoryRead) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated if :attr:`store_rotated`) and values ``[B, n * tokens_per_frame, H, D]`` of the
        attended frames."""
        if read.shared:  # one index row for the whole batch: a plain index_select
            index = read.slots[0]
            return (self.keys[layer].index_select(1, index).flatten(1, 2),
                    self.values[layer].index_select(1, index).flatten(1, 2))
        batch = torch.arange(self.batch_size, device=self.keys.device)[:, None]
        keys = self.keys[layer][batch, read.slots].flatten(1, 2)
        values = self.values[layer][batch, read.slots].flatten(1, 2)
        return keys, values

    def commit(self, keys: list[torch.Tensor], values: list[torch.Tensor], summaries: torch.Tensor | None,
               attention: torch.Tensor | None = None) -> None:
        """Record a clean chunk: the policy decides what stays, kept frames are written to free slots.

        ``keys``/``values``: one ``[B, chunk_frames * tokens_per_frame, H, D]`` per layer; keys rotated
        to the chunk's query positions if :attr:`store_rotated`, else un-rotated.
        ``summaries``: ``[B, chunk_frames, dim]`` or ``None``. ``attention``: ``[B, n]`` mass per attended
        memory frame of the read this chunk used (padded past a video's own count), or ``None``.
        """
        self._read = None
        first = self.frames_committed
        new_frames = range(first, first + self.chunk_frames)
        write_batch: list[int] = []
        write_slot: list[int] = []
        write_frame: list[int] = []
        for b, state in enumerate(self.states):
            own = None if summaries is None else summaries[b]
            if attention is None:  # the two-argument call keeps policies that override commit() working
                self.policy.commit(state, own)
            else:
                self.policy.commit(state, own, attention[b, :len(state.kept_frames())])
            self._merge(b, state)
            self._track_rows(b, state)
            kept = set(state.stored_frames())
            slots = self._slot_of[b]
            for frame in [f for f in slots if f not in kept]:
                self._free[b].append(slots.pop(frame))
            for j, frame in enumerate(new_frames):
                if frame in kept:
                    if not self._free[b]:
                        self._grow()
                    slots[frame] = self._free[b].pop()
                    write_batch.append(b)
                    write_slot.append(slots[frame])
                    write_frame.append(j)
        if not write_batch:
            return
        shape = (self.batch_size, self.chunk_frames, self.tokens_per_frame, *self.keys.shape[-2:])
        stacked_k = torch.stack([k.reshape(shape) for k in keys])
        stacked_v = torch.stack([v.reshape(shape) for v in values])
        b_idx, s_idx, f_idx = _to_device(
            torch.tensor([write_batch, write_slot, write_frame]), self.keys.device
        )
        self.keys[:, b_idx, s_idx] = stacked_k[:, b_idx, f_idx].to(self.keys.dtype)
        self.values[:, b_idx, s_idx] = stacked_v[:, b_idx, f_idx].to(self.values.dtype)

    def _track_rows(self, b: int, state: MemoryState) -> None:
        """Record which token rows video ``b``'s entries hold after a commit (pruned or pooled entries)."""
        if not (state.tokens or state.pooled or self._rows[b]):
            return
        rows = {entry: tuple(sorted(kept)) for entry, kept in state.tokens.items()}
        for entry, pool in state.pooled.items():
            rows[entry] = tuple(pooled_rows(self._grid_for(pool), pool))
        for entry, kept in state.tokens.items():
            before = self._rows[b].get(entry)
            if before is not None and not set(kept) <= set(before):
                raise ValueError(f"{type(self.policy).__name__} gave entry {entry} token rows "
                                 f"{sorted(set(kept) - set(before))} it no longer holds; a kept set can only "
                                 "shrink")
            if not kept or min(kept) < 0 or max(kept) >= self.tokens_per_frame:
                raise ValueError(f"entry {entry} must keep >= 1 token rows in [0, {self.tokens_per_frame}), "
                                 f"got {list(kept)}")
        self._rows[b] = rows

    def _grid_for(self, pool: int) -> tuple[int, int]:
        if self.grid is None:
            raise ValueError(f"{type(self.policy).__name__} pools entries {pool}x{pool}, which needs the "
                             "token grid: build the memory with grid=(h, w) (WanModel.new_memory does)")
        return self.grid

    def _merge(self, b: int, state: MemoryState) -> None:
        """Perform the merges the policy asked for in video ``b``'s last commit (see :class:`Merge`)."""
        slots = self._slot_of[b]
        for merge in state.merges:
            missing = [s for s in merge.sources if s not in slots]
            if missing:
                raise ValueError(f"{type(self.policy).__name__} merges entries {missing} that are not stored")
            index = torch.tensor([slots[s] for s in merge.sources], device=self.keys.device)
            weights = torch.tensor(merge.weights, device=self.keys.device, dtype=torch.float32)
            weights = weights.view(1, -1, 1, 1, 1)
            combined = [
                (pool[:, b].index_select(1, index).float() * weights).sum(1)
                for pool in (self.keys, self.values)
            ]
            if merge.pool > 1:
                combined = [self._pool(value, merge.pool) for value in combined]
            for source in merge.sources:
                if source != merge.entry:
                    self._free[b].append(slots.pop(source))
            target = slots[merge.entry] if merge.entry in slots else self._free[b].pop()
            slots[merge.entry] = target
            for pool, value in zip((self.keys, self.values), combined):
                pool[:, b, target] = value.to(pool.dtype)

    def _pool(self, entry: torch.Tensor, pool: int) -> torch.Tensor:
        """``entry [layers, tokens, H, D]`` with each ``pool x pool`` window averaged into its
        :func:`~memory_policies.base.pooled_rows` row; the other rows are zeroed (no longer attended)."""
        h, w = self._grid_for(pool)
        cells = torch.arange(h * w).view(h, w)
        out = torch.zeros_like(entry)
        keep = pooled_rows((h, w), pool)
        windows = [cells[top:top + pool, left:left + pool].flatten()
                   for top in range(0, h, pool) for left in range(0, w, pool)]
        for row, window in zip(keep, windows):
            out[:, row] = entry[:, window.to(entry.device)].mean(1)
        return out

    def _grow(self) -> None:
        """Double the slot pool; only unbounded policies (``Full``) ever get here."""
        old = self.capacity
        pad = torch.zeros_like(self.keys)
        self.keys = torch.cat([self.keys, pad], dim=2)
        self.values = torch.cat([self.values, pad], dim=2)
        for free in self._free:
            free[:0] = list(range(2 * old - 1, old - 1, -1))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device`` without blocking the host (pinned, non-blocking copy on CUDA)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
