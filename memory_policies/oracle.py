"""The oracle for worlds that know which views return: Belady's rule, the ceiling of any bounded policy.

A policy cannot fetch back a frame it dropped, so with a fixed number of slots the best it can do is
Belady's rule from caching: among the frames it holds, keep those whose view is needed soonest. The
oracle is told, per video, which earlier frame each frame revisits (``first_visit`` of the revisit
world) and so knows every future need; no causal policy at the same budget can recall more.

Its reading of "needed": frame ``j``'s view is needed at the first future frame showing the same view
(same ``first_visit`` root). One held frame per view suffices, so among frames of one view only the
newest is a candidate, and none while the sink or the recent window shows that view. Frames whose view
never returns rank last (oldest dropped first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memory_policies.base import MemoryState, PositionMode
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy

NEVER = float("inf")


@register_policy("oracle")
class Oracle(WindowedPolicy):
    """Sink + ``slots`` frames chosen by Belady's rule over the true future + ``recent`` window.

    Call :meth:`inform` on each video's state before streaming (the benchmark and ``cf-gen`` do it
    from the revisit world's ``first_visit``); a state that was not informed is refused at commit.
    """

    def __init__(
        self,
        sink: int = 2,
        slots: int = 4,
        recent: int = 4,
        position_mode: PositionMode = "bounded",
        rope_length: int = 21,
    ) -> None:
        super().__init__(sink=sink, recent=recent, position_mode=position_mode, rope_length=rope_length)
        if slots < 0 or recent < 1:
            raise ValueError(f"need slots >= 0 and recent >= 1, got slots={slots}, recent={recent}")
        self.slots = slots

    @staticmethod
    def inform(state: MemoryState, first_visit: Sequence[int] | torch.Tensor) -> None:
        """Give the oracle one video's future: ``first_visit[f]`` is the earliest frame showing frame
        ``f``'s view, or -1 on a first visit."""
        visits = first_visit.tolist() if isinstance(first_visit, torch.Tensor) else list(first_visit)
        views = [f if v < 0 else v for f, v in enumerate(visits)]
        next_need: dict[int, list[int]] = {}
        for frame, view in enumerate(views):
            next_need.setdefault(view, []).append(frame)
        state.extra["oracle_views"] = views
        state.extra["oracle_needs"] = next_need

    def region_size(self) -> int:
        return self.slots

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/slots": self.slots}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        views = state.extra.get("oracle_views")
        if views is None:
            raise ValueError(
                "Oracle needs the video's future: call Oracle.inform(state, first_visit) before streaming"
            )
        views = list(views)  # type: ignore[arg-type]
        if new_frames[-1] >= len(views):
            raise ValueError(
                f"Oracle was told {len(views)} frames but the video reached frame {new_frames[-1]}"
            )
        needs: dict[int, list[int]] = state.extra["oracle_needs"]  # type: ignore[assignment]
        sink = set(state.regions["sink"])
        held = set(state.regions["slow"]) | set(state.regions["fast"]) | set(new_frames)
        self._slide_window(state, new_frames)
        fast = set(state.regions["fast"])
        now = new_frames[-1] + 1
        # A view the sink or the recent window already shows needs no slot; its frames compete again
        # once they leave the window.
        shown = {views[f] for f in sink | fast}
        newest_of_view: dict[int, int] = {}
        for frame in sorted(held):
            if frame not in sink and frame not in fast and views[frame] not in shown:
                newest_of_view[views[frame]] = frame

        def next_need(frame: int) -> float:
            return next((g for g in needs[views[frame]] if g >= now), NEVER)

        ranked = sorted(newest_of_view.values(), key=lambda f: (next_need(f), -f))
        state.regions["slow"] = sorted(ranked[: self.slots])
