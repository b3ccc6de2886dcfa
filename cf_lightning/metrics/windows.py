"""Evaluation time windows: which frames of a long video each reported timestamp scores.

The paper reports long-video consistency at 10, 20, ..., 60 s of 16 fps video, each number averaged
over a 0.5 s window around the timestamp. A window is the frames whose time ``i / fps`` lies in
``[t - width / 2, t + width / 2)``: exactly ``round(width * fps)`` frames (8 at 16 fps), clipped to the
video, so a 60 s video (frames 0..959) scores only the first half of its 60 s window. The *opening*
window ``[0, width)`` is the reference for "previous window" consistency at the first timestamp and
for quality drift. Short CPU videos use the same rule with their own fps and timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

PAPER_FPS = 16.0
PAPER_TIMESTAMPS = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0)
PAPER_WIDTH = 0.5


@dataclass(frozen=True)
class TimeWindows:
    """Timestamps (seconds, strictly increasing, > 0) scored over ``width``-second windows at ``fps``."""

    fps: float = PAPER_FPS
    timestamps: tuple[float, ...] = PAPER_TIMESTAMPS
    width: float = PAPER_WIDTH

    def __post_init__(self) -> None:
        stamps = tuple(float(t) for t in self.timestamps)
        object.__setattr__(self, "timestamps", stamps)
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not self.width > 0 or round(self.width * self.fps) < 1:
            raise ValueError(f"width={self.width} s holds no frame at fps={self.fps}; need width * fps >= 1")
        if not stamps or stamps[0] <= 0 or any(b <= a for a, b in pairwise(stamps)):
            raise ValueError(f"timestamps must be strictly increasing seconds > 0, got {list(stamps)}")

    @classmethod
    def paper(cls) -> TimeWindows:
        """0.5 s windows around 10, 20, ..., 60 s at 16 fps."""
        return cls()

    @classmethod
    def every(cls, seconds: float, until: float, fps: float, width: float = PAPER_WIDTH) -> TimeWindows:
        """Timestamps ``seconds, 2 * seconds, ...`` up to ``until`` (the paper: every 10 s until 60 s)."""
        if not 0 < seconds <= until:
            raise ValueError(f"need 0 < seconds <= until, got seconds={seconds}, until={until}")
        count = math.floor(until / seconds + 1e-9)
        return cls(fps, tuple(seconds * k for k in range(1, count + 1)), width)

    @property
    def window_frames(self) -> int:
        return round(self.width * self.fps)

    def _frames_from(self, start_seconds: float, num_frames: int) -> range:
        first = max(0, math.ceil(start_seconds * self.fps - 1e-9))
        return range(min(first, num_frames), min(first + self.window_frames, num_frames))

    def window(self, timestamp: float, num_frames: int) -> range:
        """Frame indices of the window around ``timestamp`` in a video of ``num_frames`` frames."""
        return self._frames_from(timestamp - self.width / 2, num_frames)

    def opening(self, num_frames: int) -> range:
        """The video's first ``width`` seconds: the reference window before the first timestamp."""
        return self._frames_from(0.0, num_frames)

    def windows(self, num_frames: int) -> list[range]:
        """One window per timestamp; raises when a timestamp lies beyond the video."""
        found = [self.window(t, num_frames) for t in self.timestamps]
        missing = [t for t, frames in zip(self.timestamps, found) if not frames]
        if missing:
            raise ValueError(f"a video of {num_frames} frames at {self.fps} fps ({num_frames / self.fps:.2f} s) has "
                             f"no frame in the windows at {missing} s; lower the timestamps or generate longer videos")
        return found

    def labels(self) -> list[str]:
        """Column names such as ``10s`` or ``2.5s``."""
        return [f"{t:g}s" for t in self.timestamps]


def parse_timestamps(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"10,20,30"`` or a sequence of numbers -> a tuple of seconds."""
    if isinstance(text, str):
        try:
            return tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"timestamps must be comma-separated seconds such as '10,20,30', got {text!r}") from None
    return tuple(float(t) for t in text)
