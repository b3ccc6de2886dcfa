"""Deep Forcing (arXiv 2512.05081): a deep sink with re-aligned RoPE phase plus participative compression.

The paper's two training-free rules, on a Self-Forcing style window:

- *Deep Sink*: about half of the window is a persistent sink (the first frames), and the sink's
  temporal RoPE phase is re-aligned to the current timeline, so the sink reads as if it came just
  before the rest of the window instead of at the start of a long video.
- *Participative Compression*: when the cache is full, keep only the history that recent queries
  attend to (top-C by attention score), dropping redundant and degraded entries.

Our reading of what the paper leaves open, at this library's unit of memory (a latent frame):

- compression ranks whole frames, not tokens: a frame's score is the softmax attention mass the
  last committed chunk's queries put on it (one layer, heads and query tokens averaged; the
  ``attention_layer`` setting), which the model measures on the clean refresh pass;
- candidates are the frames compressed so far plus those leaving the recent window; frames that
  just left were attended while recent, so every candidate has a score from the same chunk;
- with ``token_share < 1`` compression keeps tokens, as the paper's rule does (top-C tokens): the
  compressed region holds ``C = round(token_share * compressed * tokens_per_frame)`` tokens, the ones
  the last chunk's queries attended most (per token row, same measurement), spread over at most
  ``compressed`` frames (storage holds one slot per frame, so the frame count stays bounded); a kept
  token keeps its frame's temporal position and its grid cell's spatial position, and a token once
  dropped never returns;
- "re-aligned phase" is implemented as positions that pack sink, compressed and recent frames and
  the query into one contiguous run ending at the anchor (the sink included, unlike Slow-Fast,
  whose sink keeps positions ``0..sink-1``), so no gap ever separates the sink from the present.
"""

from __future__ import annotations

import torch

from memory_policies.base import AttentionSpec, MemoryState, PositionMode
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy


@register_policy("deep_forcing")
class DeepForcing(WindowedPolicy):
    """Deep sink (re-aligned) + top-``compressed`` frames by recent attention + ``recent`` window.

    Args:
        sink: first frames kept forever (paper: about half the window).
        compressed: frames kept by participative compression.
        recent: recent frames visible, the query chunk included (as Slow-Fast's ``fast``).
        attention_layer: the layer whose attention ranks frames (negative counts from the last).
        token_share: share of the compressed frames' tokens kept (1: whole frames ranked by their summed
            attention; below 1: the top tokens over at most ``compressed`` frames, see the module doc).
        position_mode: ``bounded`` (or ``true_time``) re-aligns the sink's phase; ``absolute`` keeps true
            frame indices and no re-alignment (the form a masked full-sequence forward can reproduce).
    """

    def __init__(self, sink: int = 4, compressed: int = 2, recent: int = 4, attention_layer: int = 0,
                 position_mode: PositionMode = "bounded", rope_length: int = 21,
                 token_share: float = 1.0) -> None:
        super().__init__(sink=sink, recent=recent, position_mode=position_mode, rope_length=rope_length)
        if compressed < 0 or recent < 1:
            raise ValueError(
                f"need compressed >= 0 and recent >= 1, got compressed={compressed}, recent={recent}"
            )
        if not 0.0 < token_share <= 1.0:
            raise ValueError(f"token_share is the share of tokens kept, in (0, 1]; got {token_share}")
        self.compressed = compressed
        self.attention_layer = attention_layer
        self.token_share = token_share

    def region_size(self) -> int:
        return self.compressed

    def attention_spec(self) -> AttentionSpec:
        return AttentionSpec(self.attention_layer, per_token=self.keeps_sub_frames())

    def keeps_sub_frames(self) -> bool:
        return self.token_share < 1.0

    def token_budget(self, chunk_frames: int, grid: tuple[int, int]) -> int:
        tokens = grid[0] * grid[1]
        whole = self.sink + max(self.recent - chunk_frames, 0)
        return whole * tokens + self._kept_tokens(tokens)

    def _kept_tokens(self, tokens_per_frame: int) -> int:
        """C, the tokens the compressed region keeps."""
        return round(self.token_share * self.compressed * tokens_per_frame)

    def ablation_hparams(self) -> dict[str, object]:
        return {
            **super().ablation_hparams(),
            "memory/compressed": self.compressed,
            "memory/attention_layer": self.attention_layer,
            "memory/token_share": self.token_share,
        }

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        sink = set(state.regions["sink"])
        leaving = [f for f in state.regions["fast"] if f not in sink]
        self._slide_window(state, new_frames)
        fast = set(state.regions["fast"])
        candidates = {f for f in state.regions["slow"] + leaving if f not in fast and f not in sink}
        if self.keeps_sub_frames():
            state.regions["slow"] = self._compress_tokens(state, candidates)
            return
        # Highest attention first; on a tie the newer frame, so decisions never depend on set order.
        ranked = sorted(candidates, key=lambda f: (-state.attention.get(f, 0.0), -f))
        state.regions["slow"] = sorted(ranked[: self.compressed])

    def _compress_tokens(self, state: MemoryState, candidates: set[int]) -> list[int]:
        """The top-C candidate tokens by attention, over at most ``compressed`` frames (paper: top-C tokens);
        records the kept rows in ``state.tokens`` and returns the frames that keep any."""
        if not candidates:
            return []
        tokens_per_frame = len(state.token_attention[next(iter(candidates))])
        scored = []
        for frame in candidates:
            scores = state.token_attention[frame].tolist()
            scored += [(scores[row], frame, row) for row in state.tokens.get(frame, range(tokens_per_frame))]
        budget = self._kept_tokens(tokens_per_frame)
        kept: dict[int, list[int]] = {}
        taken = 0
        # Highest attention first; on a tie the newer frame, then the lower row: no dependence on set order.
        for _, frame, row in sorted(scored, key=lambda item: (-item[0], -item[1], item[2])):
            if taken == budget:
                break
            if frame in kept or len(kept) < self.compressed:
                kept.setdefault(frame, []).append(row)
                taken += 1
        for frame, rows in kept.items():
            if len(rows) < tokens_per_frame:
                state.tokens[frame] = tuple(sorted(rows))
        return sorted(kept)

    def positions(self, state: MemoryState, frames: list[int], query: list[int]) -> list[int]:
        """Deep Sink's re-aligned phase: every attended frame and the query in one contiguous run."""
        if self.position_mode == "absolute":
            return super().positions(state, frames, query)
        everything = frames + query
        anchor = min(query[-1], self.rope_length - 1)
        first = anchor - (len(everything) - 1)
        return [first + j for j in range(len(everything))]
