"""What a teacher's chunk-by-chunk trajectories teach at returns: endpoint error against the data.

Reads shards written by ``cf-data trajectories --chunk_context`` (revisit world, so each frame's view is
known) and reports the mean squared error between the teacher's endpoint and the data latents per
frame kind: a frame that continues the view before it, the first frame of a return to a view seen
earlier (by the gap since it was last seen), and the first frame of a view never seen before. A teacher
that recalls from its context has return error near the continuation error; one that cannot, near the
new-view error (any plausible place is as likely as the right one).

    python benchmarks/chunk_trajectories.py context=data/ode_context short=data/ode_short
"""

from __future__ import annotations

import argparse

import torch

from cf_lightning.data import last_visit_from_views
from cf_lightning.data.shards import SkipLog, decode_samples, expand_shards, read_shards

BUCKETS = ((1, 8), (9, 16), (17, None))  # return gaps; None: no upper edge
COLUMNS = ["continue", *(f"return {low}-{high}" if high else f"return {low}+" for low, high in BUCKETS),
           "new"]


def frame_kinds(view: torch.Tensor) -> list[tuple[str, int]]:
    """Per frame: ``continue``, ``return`` (with the gap since the view was last seen) or ``new``."""
    kinds = []
    for frame, last in enumerate(last_visit_from_views(view).tolist()):
        if last < 0:
            kinds.append(("new", 0))
        elif last == frame - 1:
            kinds.append(("continue", 0))
        else:
            kinds.append(("return", frame - last))
    return kinds


def column(kind: str, gap: int) -> str:
    """The table column of a frame: its kind, and for a return its gap bucket."""
    if kind != "return":
        return kind
    bucket = next(i for i, (low, high) in enumerate(BUCKETS) if low <= gap and (high is None or gap <= high))
    return COLUMNS[1 + bucket]


def endpoint_errors(urls: str) -> dict[str, list[float]]:
    """Per-frame endpoint error of every sample under ``urls``, grouped by frame kind and return gap."""
    skips = SkipLog()
    groups: dict[str, list[float]] = {}
    shards = ({"url": url} for url in expand_shards(urls, "shards"))
    for sample in decode_samples(read_shards(shards, skips), skips):
        if "ode_endpoint" not in sample or "view" not in sample:
            raise SystemExit(f"{sample['key']}: needs chunk-by-chunk trajectories (ode_endpoint) of the "
                             "revisit world (view)")
        error = (sample["ode_endpoint"] - sample["latents"]).square().mean(dim=(0, 2, 3))
        for frame, (kind, gap) in enumerate(frame_kinds(sample["view"])):
            groups.setdefault(column(kind, gap), []).append(float(error[frame]))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sets", nargs="+", metavar="LABEL=SHARDS")
    args = parser.parse_args()
    print("| trajectories | " + " | ".join(f"{c} (frames)" for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for item in args.sets:
        label, _, urls = item.partition("=")
        groups = endpoint_errors(urls)
        cells = [f"{sum(groups[c]) / len(groups[c]):.3f} ({len(groups[c])})" if groups.get(c) else "-"
                 for c in COLUMNS]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
