"""A picture of a memory policy at work: which frames each chunk attended to, by region, over a video.

Chunks run along the x axis, latent frames along the y axis; a cell is coloured by the region that held
the frame when that chunk was generated (sink, slow, fast, archive: stored but not attended), a merged
entry spans the frames it stands for, and the chunk's own frames are grey. Where the data knows which
frames revisit an earlier view (the revisit world's ``first_visit``), each revisit is marked at the
first visit it needs (at each return to an earlier view): a dot when the memory held that view, a
cross when it did not. A policy author
sees what a policy keeps, and what it misses, without reading its code.

:class:`TimelineRecorder` records snapshots without touching the generation code: while it is open,
the policy's ``commit`` is wrapped (as an instance attribute) to copy every video's regions after
each commit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np
import torch

from cf_lightning.metrics.revisit import view_ids
from memory_policies import ARCHIVE, REGIONS, MemoryPolicy, MemoryState

COLOURS = {"sink": "#1f77b4", "slow": "#d62728", "fast": "#2ca02c", ARCHIVE: "#c7c7c7"}
DRAW_ORDER = (ARCHIVE, "fast", "slow", "sink")  # later regions paint over earlier ones


@dataclass(frozen=True)
class Snapshot:
    """One video's memory after a commit: what the next chunk reads."""

    regions: dict[str, list[int]]
    members: dict[int, list[int]]
    frames_committed: int

    @classmethod
    def of(cls, state: MemoryState) -> Snapshot:
        """A copy of ``state``'s regions and merged entries (later commits do not change it)."""
        return cls(
            {k: list(v) for k, v in state.regions.items()},
            {k: list(v) for k, v in state.members.items()},
            state.frames_committed,
        )


class TimelineRecorder:
    """Context manager recording, per video, the memory after every commit of ``policy``.

    ``timelines[b]`` is video ``b``'s list of snapshots (videos numbered in the order their states first
    commit, which is the batch order of one rollout).
    """

    def __init__(self, policy: MemoryPolicy) -> None:
        self.policy = policy
        self.timelines: list[list[Snapshot]] = []
        self._index: dict[int, int] = {}
        self._shadowed: object | None = None

    def __enter__(self) -> Self:
        commit = self.policy.commit
        self._shadowed = self.policy.__dict__.get("commit")  # an instance-level commit to restore on exit

        def recording(state: MemoryState, *args: object, **kwargs: object) -> None:
            commit(state, *args, **kwargs)  # type: ignore[arg-type]
            video = self._index.setdefault(id(state), len(self._index))
            if video == len(self.timelines):
                self.timelines.append([])
            self.timelines[video].append(Snapshot.of(state))

        self.policy.commit = recording  # type: ignore[method-assign]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._shadowed is None:
            del self.policy.commit
        else:
            self.policy.commit = self._shadowed  # type: ignore[method-assign]


def chunk_revisits(snapshot: Snapshot, first_visit: torch.Tensor, start: int, chunk_frames: int
                   ) -> list[tuple[int, int, bool]]:
    """For each *return* in the chunk at ``start`` (a frame whose view differs from the frame before and
    was first seen before the chunk; frames that merely continue a view are served by the recent
    window): the frame, its first visit, and whether the memory the chunk read (``snapshot``) held the
    view in any attended frame (a merged entry counts for every frame it stands for)."""
    visits = first_visit.tolist()
    views = view_ids(first_visit).tolist()
    held = {views[m] for region in REGIONS for entry in snapshot.regions.get(region, [])
            for m in snapshot.members.get(entry, [entry]) if m < len(views)}
    return [(q, visits[q], views[q] in held) for q in range(start, min(start + chunk_frames, len(views)))
            if 0 <= visits[q] < start and views[q] != views[q - 1]]


def revisit_recall(
    snapshots: list[Snapshot], first_visit: torch.Tensor, chunk_frames: int
) -> tuple[int, int]:
    """Returns whose view the memory held when they were generated, and all returns it could hold (see
    :func:`chunk_revisits`): what a policy *offers* the model, model-free."""
    outcomes = [hit for chunk, snapshot in enumerate(snapshots, start=1)
                for _, _, hit in chunk_revisits(snapshot, first_visit, chunk * chunk_frames, chunk_frames)]
    return sum(outcomes), len(outcomes)


def render_timeline(snapshots: list[Snapshot], chunk_frames: int, first_visit: torch.Tensor | None = None,
                    title: str = "") -> np.ndarray:
    """The timeline as an RGB image ``[H, W, 3]`` (uint8). ``first_visit``: ``[F]`` of the video, or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    chunks = len(snapshots) + 1
    frames = chunks * chunk_frames
    figure, axis = plt.subplots(figsize=(min(3 + 0.08 * chunks, 16), 5))
    for chunk in range(chunks):
        start = chunk * chunk_frames
        axis.bar(chunk, chunk_frames, bottom=start, width=1.0, color="#7f7f7f", align="edge")
        if chunk == 0:
            continue
        snapshot = snapshots[chunk - 1]
        for region in DRAW_ORDER:
            for entry in snapshot.regions.get(region, []):
                members = snapshot.members.get(entry, [entry])
                merged = len(members) > 1  # lighter, with an edge, so adjacent merged entries stay apart
                axis.bar(chunk, max(members) - min(members) + 1, bottom=min(members), width=1.0,
                         color=COLOURS[region], align="edge", alpha=0.55 if merged else 1.0,
                         edgecolor="white" if merged else "none", linewidth=0.3)
        if first_visit is not None:
            for _, first, hit in chunk_revisits(snapshot, first_visit, start, chunk_frames):
                axis.plot(chunk + 0.5, first + 0.5, marker="o" if hit else "x", markersize=3,
                          color="black" if hit else "#ff7f0e", linestyle="none")
    handles = [Patch(color=COLOURS[r], label=r) for r in ("sink", "slow", "fast", ARCHIVE)]
    handles.append(Patch(color="#7f7f7f", label="query chunk"))
    if first_visit is not None:
        handles += [plt.Line2D([], [], marker="o", color="black", linestyle="none", label="revisit held"),
                    plt.Line2D([], [], marker="x", color="#ff7f0e", linestyle="none", label="revisit missed")]
    axis.legend(handles=handles, loc="upper left", fontsize=7, ncols=2)
    axis.set_xlim(0, chunks)
    axis.set_ylim(0, frames)
    axis.set_xlabel("chunk")
    axis.set_ylabel("latent frame kept")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    from PIL import Image

    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"))


def write_timeline(path: str, image: np.ndarray) -> None:
    """Save a rendered timeline as PNG."""
    from PIL import Image

    Image.fromarray(image).save(path)
