"""Reports of a long-video evaluation: the paper's tables in markdown, per-timestamp curves as a PNG,
and TensorBoard scalars plus an HParams row, so several systems (students, ablation variants, other
models' samples) compare side by side.

A :class:`SystemResult` is what one system scored: per-timestamp means over its videos and its
video-level numbers. It round-trips through ``scores.json``, so tables and plots of several
evaluations are made later without re-scoring (``cf-ablate`` does this for its variants), also by
hand::

    python -m cf_lightning.eval_report eval/slowfast/scores.json eval/longlive/scores.json --out compare/
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from cf_lightning.callbacks.tensorboard import Primitive, log_ablation_hparams

SERIES_TITLES = {
    "dino_first": "DINOv2 (to first frame)",
    "dino_prev": "DINOv2 (to previous window)",
    "clipf_first": "CLIP-F (to first frame)",
    "clipf_prev": "CLIP-F (to previous window)",
    "clip_t": "CLIP-T (text-frame)",
    "subject": "Subject consistency (VBench)",
    "background": "Background consistency (VBench)",
    "flicker": "Temporal flickering (VBench, 1 = none)",
    "quality": "Quality (Laplacian sharpness)",
}
TABLE1 = ("dino_first", "clipf_first", "clip_t", "dino_prev", "clipf_prev")
TABLE2 = ("subject", "background", "flicker", "quality")
SCALARS = {"quality_drift": "quality drift", "fps": "FPS", "effective_context": "effective context",
           "revisit_auc": "revisit AUC"}
SCORES_FILE = "scores.json"


@dataclass
class SystemResult:
    """One system's evaluation: ``series[name][k]`` is the mean over videos at ``timestamps[k]``;
    ``scalars`` holds video-level numbers (``quality_drift``, and where measured ``fps``,
    ``effective_context``, ``revisit_auc``); ``videos`` names the scored files."""

    name: str
    timestamps: list[float]
    series: dict[str, list[float]]
    scalars: dict[str, float]
    videos: list[str] = field(default_factory=list)
    features: dict[str, str] = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / SCORES_FILE
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> SystemResult:
        return cls(**json.loads(Path(path).read_text()))

    def tags(self) -> dict[str, float]:
        """Flat TensorBoard tags: ``eval/<series>/<t>s`` per timestamp and ``eval/<scalar>``."""
        flat = {f"eval/{name}/{t:g}s": value for name, values in self.series.items()
                for t, value in zip(self.timestamps, values)}
        flat.update({f"eval/{name}": value for name, value in self.scalars.items()})
        return flat


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _check_same_timestamps(results: Sequence[SystemResult]) -> list[float]:
    stamps = {tuple(r.timestamps) for r in results}
    if len(stamps) != 1:
        raise ValueError(f"systems were scored at different timestamps {sorted(stamps)}; compare like with like")
    return list(next(iter(stamps)))


def markdown_tables(results: Sequence[SystemResult]) -> str:
    """The paper's Table 1 (consistency and text alignment per timestamp) and Table 2 (VBench-style
    scores at the first and last timestamp, drift, FPS, effective context) for ``results``."""
    if not results:
        raise ValueError("no results to tabulate")
    stamps = _check_same_timestamps(results)
    labels = [f"{t:g}s" for t in stamps]
    lines = ["### Consistency and text alignment per timestamp (paper Table 1)", "",
             "| system | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for result in results:
        for name in TABLE1:
            if name in result.series:
                cells = " | ".join(_cell(v) for v in result.series[name])
                lines.append(f"| {result.name} | {SERIES_TITLES[name]} | {cells} |")
    ends = [labels[0], labels[-1]] if len(labels) > 1 else labels[:1]
    present = [n for n in TABLE2 if any(n in r.series for r in results)]
    scalars = [n for n in SCALARS if any(n in r.scalars for r in results)]
    header = [f"{SERIES_TITLES[n].split(' (')[0]} {label}" for n in present for label in ends]
    header += [SCALARS[n] for n in scalars]
    lines += ["", "### Quality at the first and last timestamp (paper Table 2)", "",
              "| system | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for result in results:
        cells = []
        for name in present:
            values = result.series.get(name)
            cells += [_cell(values[0] if values else None)] + ([_cell(values[-1] if values else None)]
                                                                if len(ends) > 1 else [])
        cells += [_cell(result.scalars.get(name)) for name in scalars]
        lines.append(f"| {result.name} | " + " | ".join(cells) + " |")
    features = {f"{k}: {v}" for r in results for k, v in r.features.items()}
    if features:
        lines += ["", "Features: " + "; ".join(sorted(features)) + "."]
    return "\n".join(lines) + "\n"


def plot_curves(results: Sequence[SystemResult], path: Path) -> Path:
    """One panel per per-timestamp series, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamps = _check_same_timestamps(results)
    names = [n for n in SERIES_TITLES if any(n in r.series for r in results)]
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        for result in results:
            if name in result.series:
                axis.plot(stamps, result.series[name], marker="o", label=result.name)
        axis.set_title(SERIES_TITLES[name], fontsize=9)
        axis.set_xlabel("time (s)")
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def log_to_tensorboard(result: SystemResult, log_dir: Path, hparams: Mapping[str, Primitive]) -> None:
    """Scalars (each series also as a curve ``eval_curve/<series>`` over step = timestamp in ms) and one HParams row
    whose metric columns are the flat per-timestamp and video-level tags."""
    logger = TensorBoardLogger(save_dir=str(log_dir), name="", version="", default_hp_metric=False)
    tags = result.tags()
    log_ablation_hparams(logger, {"eval/system": result.name, **hparams}, list(tags))
    writer = logger.experiment
    for tag, value in tags.items():
        writer.add_scalar(tag, value, global_step=0)
    for name, values in result.series.items():
        for t, value in zip(result.timestamps, values):
            writer.add_scalar(f"eval_curve/{name}", value, global_step=round(t * 1000))
    writer.flush()
    logger.finalize("success")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Side-by-side tables and curves of several cf-eval runs.")
    parser.add_argument("scores", nargs="+", type=Path, help=f"{SCORES_FILE} files written by cf-eval")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    results = [SystemResult.load(path) for path in args.scores]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(markdown_tables(results))
    plot_curves(results, args.out / "curves.png")
    print(args.out / "table.md")


if __name__ == "__main__":
    main()
