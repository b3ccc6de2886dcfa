"""The explicit streaming memory: a policy's decisions plus the K/V tensors they refer to.

One :class:`KVMemory` per batch of videos is handed to the model and back; attention layers never
hold hidden cache state. Keys are stored un-rotated, so positions are chosen at read time by the
policy. Storage is a fixed pool of slots per video (sized by the policy budget, grown only for
unbounded policies), so per-chunk memory use is bounded by ``budget x tokens_per_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memory_policies import MemoryPolicy, MemoryState, MemoryView


@dataclass(frozen=True)
class MemoryRead:
    """What one query chunk attends to, as device tensors (``n`` = most memory frames in the batch)."""

    views: list[MemoryView]
    slots: torch.Tensor  # [B, n] storage slot of each attended memory frame
    valid: torch.Tensor | None  # [B, n] False where a shorter memory is padded; None when all valid
    positions: torch.Tensor  # [B, n] temporal RoPE positions of the memory frames
    query_positions: torch.Tensor  # [B, chunk_frames]

    @property
    def num_frames(self) -> int:
        return self.slots.shape[1]


class KVMemory:
    """Per-video memory states of one policy and a slot pool of per-layer keys and values."""

    def __init__(self, policy: MemoryPolicy, batch_size: int, chunk_frames: int, tokens_per_frame: int,
                 num_layers: int, num_heads: int, head_dim: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.policy = policy
        self.chunk_frames = chunk_frames
        self.tokens_per_frame = tokens_per_frame
        self.states: list[MemoryState] = [policy.new_state(chunk_frames) for _ in range(batch_size)]
        budget = policy.budget(chunk_frames)
        capacity = budget if budget is not None else 4 * chunk_frames
        shape = (num_layers, batch_size, max(capacity, 1), tokens_per_frame, num_heads, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self._slot_of: list[dict[int, int]] = [{} for _ in range(batch_size)]
        self._free: list[list[int]] = [list(range(shape[2] - 1, -1, -1)) for _ in range(batch_size)]

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

    def read(self) -> MemoryRead:
        views = [self.policy.read(state) for state in self.states]
        longest = max(len(view.frames) for view in views)
        slots = torch.zeros(self.batch_size, longest, dtype=torch.long)
        positions = torch.zeros(self.batch_size, longest, dtype=torch.long)
        valid = torch.zeros(self.batch_size, longest, dtype=torch.bool)
        for b, view in enumerate(views):
            count = len(view.frames)
            slots[b, :count] = torch.tensor([self._slot_of[b][f] for f in view.frames], dtype=torch.long)
            positions[b, :count] = torch.tensor(view.positions, dtype=torch.long)
            valid[b, :count] = True
        device = self.keys.device
        query_positions = torch.tensor([view.query_positions for view in views], dtype=torch.long)
        return MemoryRead(
            views=views,
            slots=slots.to(device),
            valid=None if bool(valid.all()) else valid.to(device),
            positions=positions.to(device),
            query_positions=query_positions.to(device),
        )

    def gather(self, layer: int, read: MemoryRead) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotated keys and values ``[B, n * tokens_per_frame, H, D]`` of the attended frames."""
        batch = torch.arange(self.batch_size, device=self.keys.device)[:, None]
        keys = self.keys[layer][batch, read.slots].flatten(1, 2)
        values = self.values[layer][batch, read.slots].flatten(1, 2)
        return keys, values

    def commit(self, keys: list[torch.Tensor], values: list[torch.Tensor], summaries: torch.Tensor | None) -> None:
        """Record a clean chunk: the policy decides what stays, kept frames are written to free slots.

        ``keys``/``values``: one ``[B, chunk_frames * tokens_per_frame, H, D]`` per layer, un-rotated.
        ``summaries``: ``[B, chunk_frames, dim]`` or ``None``.
        """
        first = self.frames_committed
        new_frames = range(first, first + self.chunk_frames)
        write_batch: list[int] = []
        write_slot: list[int] = []
        write_frame: list[int] = []
        for b, state in enumerate(self.states):
            self.policy.commit(state, None if summaries is None else summaries[b])
            kept = set(state.kept_frames())
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
        device = self.keys.device
        b_idx, s_idx, f_idx = (torch.tensor(i, device=device) for i in (write_batch, write_slot, write_frame))
        self.keys[:, b_idx, s_idx] = stacked_k[:, b_idx, f_idx].to(self.keys.dtype)
        self.values[:, b_idx, s_idx] = stacked_v[:, b_idx, f_idx].to(self.values.dtype)

    def _grow(self) -> None:
        """Double the slot pool; only unbounded policies (``Full``) ever get here."""
        old = self.capacity
        pad = torch.zeros_like(self.keys)
        self.keys = torch.cat([self.keys, pad], dim=2)
        self.values = torch.cat([self.values, pad], dim=2)
        for free in self._free:
            free[:0] = list(range(2 * old - 1, old - 1, -1))
