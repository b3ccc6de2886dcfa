"""The revisit world: procedural videos in which memory provably matters, with exact ground truth.

A camera window looks at a large static canvas painted per video from a small palette (coarse
blocks plus a few shaped objects). The video is a sequence of segments; each segment sits at one
*place* and pans a few pixels back and forth, so there is motion. Between segments the camera cuts
to a new place or returns to an earlier one after a controlled gap. Because the canvas is static
and camera positions are integers, a revisited view is pixel-equal to its first visit, and the
per-frame camera position tells a model *where* it is: on a revisit only the content is missing,
which only memory can supply.

Pure torch and the standard library; no Lightning.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "PALETTE",
    "TRAJECTORIES",
    "LatentTruth",
    "RevisitVideo",
    "RevisitWorldConfig",
    "first_visit_from_views",
    "generate_video",
    "last_visit_from_views",
    "latent_truth",
]

TRAJECTORIES: tuple[str, ...] = ("wander", "loop", "home")
"""Trajectory types; each video draws one and its prompt names it, so text conditioning matters."""

PALETTE: tuple[tuple[int, int, int], ...] = (
    (20, 20, 20),
    (235, 235, 235),
    (220, 40, 40),
    (40, 180, 60),
    (40, 80, 220),
    (240, 220, 50),
    (50, 200, 220),
    (200, 60, 200),
    (240, 140, 30),
    (110, 50, 160),
    (130, 80, 40),
    (128, 128, 128),
)
"""Base colours; each video uses a random subset of ``palette_size`` of them."""

_SHAPES = ("square", "disc", "cross", "diamond")
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class RevisitWorldConfig:
    """Sizes and statistics of the revisit world (defaults: a CPU trains on it in minutes).

    The defaults: segments (6-16 frames) much longer than a chunk, more
    places than a small memory holds, revisit gaps up to ``gap_max`` = 48 frames (3-6x a budget of
    8 frames), 32x32 frames whose 8x8 colour blocks match ``PixelCodec(patch=8)`` latents of 4x4.

    Attributes:
        frame_height, frame_width: camera window (video frame) size in pixels.
        canvas_height, canvas_width: size of the scene the window moves over.
        num_frames: frames per video.
        segment_min, segment_max: inclusive range of frames spent at one place per visit.
        num_places: distinct places (disjoint canvas regions) a video may visit.
        gap_min, gap_max: target range, in frames, between leaving a place and returning to it.
        revisit_prob: for ``wander`` videos, chance that a segment returns to an eligible place
            rather than opening a new one.
        pan_step, pan_positions: within a segment the camera ping-pongs over ``pan_positions``
            positions ``pan_step`` pixels apart (same path on every visit, so revisits repeat views).
        block_size: side of the canvas colour blocks in pixels.
        palette_size: colours per video, drawn from :data:`PALETTE`.
        num_objects, object_size: shaped objects painted over the blocks, spread over the places,
            so they leave the view and re-enter on revisits.
        trajectories: trajectory types to draw from (subset of :data:`TRAJECTORIES`).
    """

    frame_height: int = 32
    frame_width: int = 32
    canvas_height: int = 160
    canvas_width: int = 160
    num_frames: int = 96
    segment_min: int = 6
    segment_max: int = 16
    num_places: int = 10
    gap_min: int = 8
    gap_max: int = 48
    revisit_prob: float = 0.6
    pan_step: int = 2
    pan_positions: int = 4
    block_size: int = 8
    palette_size: int = 8
    num_objects: int = 6
    object_size: int = 12
    trajectories: tuple[str, ...] = TRAJECTORIES

    def __post_init__(self) -> None:
        self.trajectories = tuple(self.trajectories)
        positive = (
            "frame_height",
            "frame_width",
            "canvas_height",
            "canvas_width",
            "num_frames",
            "segment_min",
            "num_places",
            "pan_positions",
            "block_size",
            "palette_size",
            "object_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gap_min", "pan_step", "num_objects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.segment_max < self.segment_min:
            raise ValueError(f"segment_max={self.segment_max} is below segment_min={self.segment_min}")
        if self.gap_max < self.gap_min:
            raise ValueError(f"gap_max={self.gap_max} is below gap_min={self.gap_min}")
        if not 0.0 <= self.revisit_prob <= 1.0:
            raise ValueError(f"revisit_prob must be in [0, 1], got {self.revisit_prob}")
        if not 1 <= self.palette_size <= len(PALETTE):
            raise ValueError(f"palette_size must be in [1, {len(PALETTE)}], got {self.palette_size}")
        if self.object_size > min(self.frame_height, self.frame_width):
            raise ValueError(
                f"object_size={self.object_size} exceeds the frame {self.frame_height}x{self.frame_width}"
            )
        unknown = [t for t in self.trajectories if t not in TRAJECTORIES]
        if unknown or not self.trajectories:
            raise ValueError(
                f"trajectories must be a non-empty subset of {TRAJECTORIES}, got {self.trajectories}"
            )
        rows, cols = self.place_grid
        if rows * cols < self.num_places:
            raise ValueError(
                f"a {self.canvas_height}x{self.canvas_width} canvas holds {rows * cols} places of "
                f"{self.frame_height + self.pan_extent}x{self.frame_width + self.pan_extent} pixels "
                f"(frame + pan), num_places={self.num_places} does not fit; enlarge the canvas"
            )

    @property
    def pan_extent(self) -> int:
        """Pixels the camera travels from one end of a place's pan path to the other."""
        return self.pan_step * (self.pan_positions - 1)

    @property
    def camera_step(self) -> float:
        """The smallest move of the normalised camera (``RevisitVideo.camera``) in one pan step, 0 without
        pans: the finest difference of camera a model must resolve to tell neighbouring views apart."""
        if not self.pan_extent:
            return 0.0
        spans = (self.canvas_height - self.frame_height, self.canvas_width - self.frame_width)
        return 2.0 * self.pan_step / max(max(spans), 1)

    @property
    def place_grid(self) -> tuple[int, int]:
        """Rows and columns of disjoint place cells on the canvas."""
        return (
            self.canvas_height // (self.frame_height + self.pan_extent),
            self.canvas_width // (self.frame_width + self.pan_extent),
        )


@dataclass
class RevisitVideo:
    """One generated video with its ground truth (all per-frame tensors have length ``T``).

    Attributes:
        frames: ``uint8 [T, 3, H, W]``.
        prompt: text describing the trajectory type.
        trajectory: the trajectory type (one of :data:`TRAJECTORIES`).
        camera: ``float [T, 2]`` camera (y, x) normalised to [-1, 1] over the canvas: the
            per-frame "where am I" condition.
        position: ``long [T, 2]`` integer (y, x) of the window's top-left corner on the canvas.
        view: ``long [T]`` id of the camera position, numbered in order of first appearance;
            equal ids mean pixel-equal frames.
        first_visit: ``long [T]`` earliest frame showing the same view, -1 on a first view.
        last_visit: ``long [T]`` most recent earlier frame showing the same view, -1 on a first
            view; ``t - last_visit[t]`` is the gap a memory must bridge.
        place: ``long [T]`` place id of each frame.
        segment_starts: ``long [S]`` first frame of each segment (cuts happen there).
        visible_objects: ``bool [T, num_objects]`` whether each object overlaps the view.
        seed: the seed it was generated from.
    """

    frames: Tensor
    prompt: str
    trajectory: str
    camera: Tensor
    position: Tensor
    view: Tensor
    first_visit: Tensor
    last_visit: Tensor
    place: Tensor
    segment_starts: Tensor
    visible_objects: Tensor
    seed: int


@dataclass
class LatentTruth:
    """Ground truth aligned to a codec's latent frames (all tensors have length ``F``).

    Attributes:
        camera: ``float [F, 2]`` mean camera over the pixel frames of each latent frame.
        view: ``long [F]`` equal ids mean the latent frames summarise pixel-equal frame groups.
        first_visit: ``long [F]`` from ``view``, as in :class:`RevisitVideo`.
        place: ``long [F]`` place of the last pixel frame of each latent frame.
    """

    camera: Tensor
    view: Tensor
    first_visit: Tensor
    place: Tensor


def first_visit_from_views(view: Tensor) -> Tensor:
    """For view ids ``[..., T]``, the index of the earliest frame with the same id (-1 for itself)."""
    rows = view.reshape(-1, view.shape[-1]).tolist()
    out = []
    for row in rows:
        first: dict[int, int] = {}
        line = []
        for t, v in enumerate(row):
            line.append(first.get(v, -1))
            first.setdefault(v, t)
        out.append(line)
    return torch.tensor(out, dtype=torch.long).reshape(view.shape)


def last_visit_from_views(view: Tensor) -> Tensor:
    """For view ids ``[..., T]``, the index of the most recent earlier frame with the same id, else -1."""
    rows = view.reshape(-1, view.shape[-1]).tolist()
    out = []
    for row in rows:
        last: dict[int, int] = {}
        line = []
        for t, v in enumerate(row):
            line.append(last.get(v, -1))
            last[v] = t
        out.append(line)
    return torch.tensor(out, dtype=torch.long).reshape(view.shape)


def latent_truth(video: RevisitVideo, groups: Sequence[range]) -> LatentTruth:
    """Align a video's ground truth to latent frames given each latent frame's pixel-frame group.

    ``groups`` comes from :meth:`LatentCodec.frame_groups`. Two latent frames share a view id only
    if their whole groups are view-for-view equal, so a latent revisit is still pixel-exact.
    """
    ids: dict[tuple[int, ...], int] = {}
    view = [ids.setdefault(tuple(video.view[list(g)].tolist()), len(ids)) for g in groups]
    view_t = torch.tensor(view, dtype=torch.long)
    return LatentTruth(
        camera=torch.stack([video.camera[list(g)].mean(0) for g in groups]),
        view=view_t,
        first_visit=first_visit_from_views(view_t),
        place=video.place[[g[-1] for g in groups]],
    )


def generate_video(config: RevisitWorldConfig, seed: int) -> RevisitVideo:
    """Generate the video for ``seed``: same config and seed give the same video on every machine."""
    rng = random.Random(seed)
    palette = rng.sample(PALETTE, config.palette_size)
    paths = _place_paths(config, rng)
    canvas, boxes = _paint_canvas(config, rng, palette, paths)
    trajectory = rng.choice(config.trajectories)
    lengths = _segment_lengths(config, rng)
    places = _SCHEDULES[trajectory](config, rng, lengths)

    positions: list[tuple[int, int]] = []
    place_of_frame: list[int] = []
    segment_starts: list[int] = []
    for place, length in zip(places, lengths, strict=True):
        segment_starts.append(len(positions))
        positions.extend(paths[place][_ping_pong(k, config.pan_positions)] for k in range(length))
        place_of_frame.extend([place] * length)

    h, w = config.frame_height, config.frame_width
    frames = torch.stack([canvas[:, y : y + h, x : x + w] for y, x in positions])
    position = torch.tensor(positions, dtype=torch.long)
    span = torch.tensor(
        [max(config.canvas_height - h, 1), max(config.canvas_width - w, 1)], dtype=torch.float32
    )
    ids: dict[tuple[int, int], int] = {}
    view = torch.tensor([ids.setdefault(p, len(ids)) for p in positions], dtype=torch.long)
    visible = torch.tensor(
        [
            [y < by + bs and by < y + h and x < bx + bs and bx < x + w for by, bx, bs in boxes]
            for y, x in positions
        ],
        dtype=torch.bool,
    ).reshape(len(positions), len(boxes))
    return RevisitVideo(
        frames=frames,
        prompt=_prompt(trajectory, places),
        trajectory=trajectory,
        camera=2.0 * position.float() / span - 1.0,
        position=position,
        view=view,
        first_visit=first_visit_from_views(view),
        last_visit=last_visit_from_views(view),
        place=torch.tensor(place_of_frame, dtype=torch.long),
        segment_starts=torch.tensor(segment_starts, dtype=torch.long),
        visible_objects=visible,
        seed=seed,
    )


def _ping_pong(k: int, n: int) -> int:
    """Index ``k`` steps along a back-and-forth walk over ``n`` positions (0, 1, .., n-1, n-2, ..)."""
    if n == 1:
        return 0
    i = k % (2 * (n - 1))
    return i if i < n else 2 * (n - 1) - i


def _place_paths(config: RevisitWorldConfig, rng: random.Random) -> list[list[tuple[int, int]]]:
    """Pan path (top-left positions) of each place, inside its own disjoint cell of the canvas."""
    rows, cols = config.place_grid
    cell_h, cell_w = config.frame_height + config.pan_extent, config.frame_width + config.pan_extent
    cells = rng.sample(range(rows * cols), config.num_places)
    paths = []
    for cell in cells:
        top, left = (cell // cols) * cell_h, (cell % cols) * cell_w
        dy, dx = rng.choice(_DIRECTIONS)
        y0 = top + (config.pan_extent if dy < 0 else 0)
        x0 = left + (config.pan_extent if dx < 0 else 0)
        paths.append(
            [
                (y0 + dy * config.pan_step * i, x0 + dx * config.pan_step * i)
                for i in range(config.pan_positions)
            ]
        )
    return paths


def _shape_mask(shape: str, size: int) -> Tensor:
    """Boolean ``[size, size]`` mask of an object shape."""
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    if shape == "disc":
        return yy**2 + xx**2 <= (size / 2) ** 2
    if shape == "cross":
        return (yy.abs() <= size / 6) | (xx.abs() <= size / 6)
    if shape == "diamond":
        return yy.abs() + xx.abs() <= size / 2
    return torch.ones(size, size, dtype=torch.bool)


def _paint_canvas(
    config: RevisitWorldConfig,
    rng: random.Random,
    palette: list[tuple[int, int, int]],
    paths: list[list[tuple[int, int]]],
) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """Random colour blocks plus objects (each inside one place's field of view); returns boxes."""
    colors = torch.tensor(palette, dtype=torch.uint8)
    bs = config.block_size
    grid_h, grid_w = math.ceil(config.canvas_height / bs), math.ceil(config.canvas_width / bs)
    index = torch.tensor([rng.randrange(len(palette)) for _ in range(grid_h * grid_w)]).reshape(
        grid_h, grid_w
    )
    blocks = index.repeat_interleave(bs, 0).repeat_interleave(bs, 1)[
        : config.canvas_height, : config.canvas_width
    ]
    canvas = colors[blocks].permute(2, 0, 1).contiguous()
    boxes = []
    size = config.object_size
    for j in range(config.num_objects):
        path = paths[j % len(paths)]
        ys, xs = [p[0] for p in path], [p[1] for p in path]
        y = rng.randint(min(ys), max(ys) + config.frame_height - size)
        x = rng.randint(min(xs), max(xs) + config.frame_width - size)
        mask = _shape_mask(rng.choice(_SHAPES), size)
        color = colors[rng.randrange(len(palette))]
        patch = canvas[:, y : y + size, x : x + size]
        patch[:, mask] = color.view(3, 1)
        boxes.append((y, x, size))
    return canvas, boxes


def _segment_lengths(config: RevisitWorldConfig, rng: random.Random) -> list[int]:
    """Segment lengths covering exactly ``num_frames`` (the last one is cut short)."""
    lengths: list[int] = []
    remaining = config.num_frames
    while remaining > 0:
        length = min(rng.randint(config.segment_min, config.segment_max), remaining)
        lengths.append(length)
        remaining -= length
    return lengths


def _mean_segment(config: RevisitWorldConfig) -> float:
    return (config.segment_min + config.segment_max) / 2


def _wander(config: RevisitWorldConfig, rng: random.Random, lengths: list[int]) -> list[int]:
    """Open new places or return to one whose gap since its last visit is in [gap_min, gap_max].

    A returning segment picks the eligible place whose gap is closest to a uniformly drawn target,
    so gaps spread over the whole range instead of clustering at the shortest one.
    """
    fresh = rng.sample(range(config.num_places), config.num_places)
    last_end: dict[int, int] = {}
    places: list[int] = []
    t = 0
    for length in lengths:
        previous = places[-1] if places else None
        visited = [p for p in last_end if p != previous]
        eligible = [p for p in visited if config.gap_min <= t - last_end[p] <= config.gap_max]
        if eligible and (not fresh or rng.random() < config.revisit_prob):
            target = rng.randint(config.gap_min, config.gap_max)
            place = min(eligible, key=lambda p: (abs(t - last_end[p] - target), p))
        elif fresh:
            place = fresh.pop()
        elif visited:
            place = min(visited, key=lambda p: (_outside(t - last_end[p], config.gap_min, config.gap_max), p))
        else:
            place = places[-1]
        places.append(place)
        t += length
        last_end[place] = t
    return places


def _outside(value: int, low: int, high: int) -> int:
    """Distance of ``value`` from the interval [low, high]."""
    return max(low - value, value - high, 0)


def _loop(config: RevisitWorldConfig, rng: random.Random, lengths: list[int]) -> list[int]:
    """Cycle through k places; k is chosen so a lap's gap lands in [gap_min, gap_max] on average."""
    mean = _mean_segment(config)
    low = min(max(3, 1 + math.ceil(config.gap_min / mean)), config.num_places)
    high = min(max(low, 1 + math.floor(config.gap_max / mean)), config.num_places)
    tour = rng.sample(range(config.num_places), rng.randint(low, high))
    return [tour[i % len(tour)] for i in range(len(lengths))]


def _home(config: RevisitWorldConfig, rng: random.Random, lengths: list[int]) -> list[int]:
    """Return to a home place after excursions of a few segments (gaps in range on average)."""
    mean = _mean_segment(config)
    low = max(1, math.ceil(config.gap_min / mean))
    high = max(low, math.floor(config.gap_max / mean))
    order = rng.sample(range(config.num_places), config.num_places)
    home, others = order[0], order[1:]
    places = [home]
    excursion = 0
    budget = rng.randint(low, high)
    while len(places) < len(lengths):
        if excursion == budget or not others:
            places.append(home)
            excursion, budget = 0, rng.randint(low, high)
            continue
        candidates = [p for p in others if p != places[-1]]
        unseen = [p for p in candidates if p not in places]
        places.append(unseen[0] if unseen else rng.choice(candidates))
        excursion += 1
    return places


_SCHEDULES: dict[str, Callable[[RevisitWorldConfig, random.Random, list[int]], list[int]]] = {
    "wander": _wander,
    "loop": _loop,
    "home": _home,
}


def _prompt(trajectory: str, places: list[int]) -> str:
    """Describe the trajectory type (not the content, which only memory may supply)."""
    count = len(set(places))
    if trajectory == "loop":
        return f"the camera circles through {count} places in a loop, returning to each in turn"
    if trajectory == "home":
        return f"the camera makes trips to {count - 1} other places and keeps returning to its starting place"
    return f"the camera wanders across {count} places and comes back to some of them"
