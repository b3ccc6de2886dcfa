"""`cf-ablate`: run one recipe under several variants and compare them side by side.

Each variant is a list of ``cf-fit`` overrides (for example a different ``--model.memory``). Runs go
into one TensorBoard experiment, one version per variant, so TensorBoard's HParams tab compares
them; afterwards the final scalars are read back from the event files into ``comparison.md`` and
the revisit-error curves into ``revisit_error.png`` next to the logs. With ``--eval "<cf-eval
arguments>"`` every variant's final checkpoint is also evaluated by ``cf-eval`` (a TensorBoard run
``<variant>/eval``); its video-level numbers join ``comparison.md`` and the per-timestamp tables and
curves of all variants go to ``evaluation.md`` and ``evaluation_curves.png``.

Variants file (YAML)::

    slow_fast: []                                  # the recipe as it is
    sliding_window: [--model.memory, sliding_window, --model.memory.window, "8"]
    short_teacher: [--model.teacher.context, last_n]
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cf_lightning.cli.evaluate import main as cf_eval
from cf_lightning.cli.fit import main as cf_fit
from cf_lightning.eval_report import SCORES_FILE, SystemResult, markdown_tables, plot_curves

GAP_TAG = re.compile(r"^val/revisit_error/gap_(\d+)-(\d+)$")


def load_variants(path: str | Path) -> dict[str, list[str]]:
    variants = yaml.safe_load(Path(path).read_text())
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"{path} must map variant names to lists of cf-fit overrides, got {variants!r}")
    for name, overrides in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise ValueError(
                f"variant name {name!r} must use letters, digits, '_', '-' or '.' (it names a folder)"
            )
        if not isinstance(overrides, list):
            raise TypeError(f"variant {name!r} must be a list of cf-fit arguments, got {overrides!r}")
    return {str(k): [str(a) for a in v] for k, v in variants.items()}


def run_variants(recipe: str, variants: dict[str, list[str]], save_dir: Path, name: str,
                 extra: list[str]) -> dict[str, Path]:
    """Fit every variant in this process; returns each variant's log directory."""
    logs = {}
    for variant, overrides in variants.items():
        cf_fit(["fit", "--config", recipe, *extra, *overrides,
                "--trainer.logger.init_args.save_dir", str(save_dir),
                "--trainer.logger.init_args.name", name,
                "--trainer.logger.init_args.version", variant])
        logs[variant] = save_dir / name / variant
    return logs


def final_scalars(log_dir: Path) -> dict[str, float]:
    """Last value of every scalar tag in a run's event files (TensorBoard's own reader)."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def comparison_table(results: dict[str, dict[str, float]], metrics: list[str]) -> str:
    header = "| variant | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---|" * len(metrics)
    rows = []
    for variant, scalars in results.items():
        cells = [f"{scalars[m]:.4g}" if m in scalars else "-" for m in metrics]
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows]) + "\n"


def plot_revisit_curves(results: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Revisit error per gap bucket, one line per variant; None when no run logged the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    plotted = False
    for variant, scalars in results.items():
        buckets = sorted((int(m[2]), v) for tag, v in scalars.items() if (m := GAP_TAG.match(tag)))
        if buckets:
            axis.plot([b for b, _ in buckets], [v for _, v in buckets], marker="o", label=variant)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_xlabel("revisit gap (latent frames, bucket upper edge)")
    axis.set_ylabel("revisit error (MSE to own first visit)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def final_checkpoint(log_dir: Path) -> Path:
    """``checkpoints/last.ckpt`` of a run, else its newest checkpoint."""
    folder = log_dir / "checkpoints"
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise FileNotFoundError(f"{str(folder)!r} holds no checkpoint to evaluate")
    return found[-1]


def evaluate_variants(logs: dict[str, Path], eval_args: str, out: Path) -> list[SystemResult]:
    """cf-eval on every variant's final checkpoint into ``<run>/eval``; tables and curves side by side."""
    results = []
    for variant, log_dir in logs.items():
        # the user's arguments last: cf-gen arguments after their '--' must stay at the end
        cf_eval(
            [
                "--checkpoint",
                str(final_checkpoint(log_dir)),
                "--out",
                str(log_dir / "eval"),
                "--name",
                variant,
                *shlex.split(eval_args),
            ]
        )
        results.append(SystemResult.load(log_dir / "eval" / SCORES_FILE))
    (out / "evaluation.md").write_text(markdown_tables(results))
    plot_curves(results, out / "evaluation_curves.png")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the recipe every variant starts from")
    parser.add_argument("--variants", required=True, help="YAML: variant name -> list of cf-fit overrides")
    parser.add_argument("--save_dir", default="runs")
    parser.add_argument("--name", default="ablation", help="TensorBoard experiment name")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["val/effective_context", "val/revisit_auc", "train/dmd_loss", "train/critic_loss"],
    )
    parser.add_argument(
        "--eval",
        default=None,
        help="cf-eval arguments (prompts, seeds, features) to evaluate "
        'every variant\'s final checkpoint with, e.g. "--prompts p.txt --dinov2 pixel_stats"',
    )
    args, extra = parser.parse_known_args(argv)
    save_dir = Path(args.save_dir)
    logs = run_variants(args.config, load_variants(args.variants), save_dir, args.name, extra)
    results = {variant: final_scalars(log_dir) for variant, log_dir in logs.items()}
    out = save_dir / args.name
    if args.eval is not None:
        for evaluated in evaluate_variants(logs, args.eval, out):
            results[evaluated.name].update({f"eval/{k}": v for k, v in evaluated.scalars.items()})
        args.metrics += sorted({t for s in results.values() for t in s if t.startswith("eval/")})
    gap_metrics = sorted({t for s in results.values() for t in s if GAP_TAG.match(t)},
                         key=lambda t: int(GAP_TAG.match(t)[1]))  # type: ignore[index]
    (out / "comparison.md").write_text(comparison_table(results, [*args.metrics, *gap_metrics]))
    plot_revisit_curves(results, out / "revisit_error.png")
    print(out / "comparison.md")


if __name__ == "__main__":
    main()
