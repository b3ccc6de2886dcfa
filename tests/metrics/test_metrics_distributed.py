"""Metrics synced over two gloo ranks equal the single-process values (uneven videos per rank)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cf_lightning.metrics import (
    Extractors,
    FrameConsistency,
    LongVideoMetrics,
    PixelStatsExtractor,
    QualityDrift,
    RevisitError,
    TimeWindows,
)
from tests.metrics.worlds import revisit_world

WORLD_SIZE = 2
GAPS = [2, 4, 6, 9, 12, 16, 3]  # 7 videos: rank 0 gets 4, rank 1 gets 3


def all_metrics() -> dict[str, torch.nn.Module]:
    extractor = PixelStatsExtractor(size=4, bins=4)
    return {
        "revisit": RevisitError(max_gap=16, bucket_edges=[0, 4, 8, 16]),
        "consistency": FrameConsistency(extractor, "first", windows=TimeWindows(fps=4, timestamps=(2, 4), width=1)),
        "drift": QualityDrift(window_frames=3, extractor=extractor),
        "long_video": LongVideoMetrics(TimeWindows(fps=4, timestamps=(2, 4), width=1), Extractors(structure=extractor)),
    }


def evaluate(video: torch.Tensor, first_visit: torch.Tensor) -> dict[str, object]:
    metrics = all_metrics()
    metrics["revisit"].update(video, None, first_visit)
    for chunk in video.split(8, dim=2):
        metrics["consistency"].update(chunk)
    metrics["drift"].update(video)
    metrics["long_video"].update(video)
    return {name: metric.compute() for name, metric in metrics.items()}


def worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        video, first_visit = revisit_world(GAPS)
        result = evaluate(video[rank::WORLD_SIZE], first_visit[rank::WORLD_SIZE])
        torch.save(result, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "result")), nprocs=WORLD_SIZE)
    expected = evaluate(*revisit_world(GAPS))
    for rank in range(WORLD_SIZE):
        synced = torch.load(tmp_path / f"result.{rank}", weights_only=False)
        torch.testing.assert_close(synced, expected, equal_nan=True)
    assert expected["revisit"]["effective_context"].item() == 16
