"""Reproduce docs/results.md: the Context Forcing claim at revisit-world scale (2 CPU cores).

Trains three stage-2 students from the same assets (recipes/assets/, see rebuild_assets.py), two
processes at a time with one torch thread each, then measures their effective context on held-out
videos with benchmarks/revisit.py:

- ``slow_fast``: Context Forcing, Slow-Fast memory, the teacher sees what the memory keeps;
- ``sliding_window``: the same, with a sliding-window memory of the same budget;
- ``short_teacher``: Slow-Fast memory, but the teacher only sees its short window (LongLive-style).

    python scripts/reproduce_results.py [--steps 1500] [--runs runs/results] [--videos 64] [--seed 0]
        [--resume] [--init slow_fast=PATH ...] [--set --model.init_args.teacher.context_positions student ...]

``--seed`` re-seeds training (rollout lengths, exit steps, noise) and the training videos (world seeds
``seed .. seed + num_videos - 1``, in a seed-dependent order); the assets, the held-out videos and the
evaluation stay the same, so two seeds differ only by training. ``--set`` appends ``cf-fit`` overrides to
every variant (a different teacher, layout or setting), so a table can be re-measured under one change.
``--init VARIANT=PATH`` starts one variant from its own student init (e.g. each pipeline's init regressed
from its own teacher, recipes/student_context_ode.yaml); the others keep the recipe's.
``--resume`` continues each variant from its last checkpoint (the recipes save one every 100 batches),
so an interrupted reproduction loses at most those batches and still gives the uninterrupted weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "slow_fast": ["--config", "recipes/slowfast.yaml"],
    "sliding_window": ["--config", "recipes/sliding_window.yaml"],
    "short_teacher": ["--config", "recipes/slowfast.yaml", "--model.teacher.context", "last_n"],
}


def variant_inits(pairs: list[str]) -> dict[str, str]:
    """``VARIANT=PATH`` pairs of ``--init``, refused by name when malformed or for no variant."""
    inits = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not path or name not in VARIANTS:
            raise SystemExit(
                f"--init {pair!r}: expected VARIANT=PATH with VARIANT one of {', '.join(VARIANTS)}"
            )
        inits[name] = path
    return inits


def launch(
    name: str, args: list[str], runs: Path, steps: int, seed: int, extra: list[str], resume: bool
) -> subprocess.Popen:
    last = runs / "results" / name / "checkpoints" / "last.ckpt"
    resumed = resume and last.exists()
    command = [
        sys.executable,
        "-m",
        "cf_lightning.cli.fit",
        "fit",
        *args,
        *extra,
        "--trainer.max_steps",
        str(steps),
        "--seed_everything",
        str(seed),
        "--data.init_args.seed",
        str(seed),
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.logger.init_args.name",
        "results",
        "--trainer.logger.init_args.version",
        name,
        "--trainer.enable_progress_bar",
        "false",
        *(["--ckpt_path", str(last)] if resumed else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (runs / f"{name}.log").open("a" if resumed else "w")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "reproduce")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (0: the recipes' own)")
    parser.add_argument("--resume", action="store_true",
                        help="continue each variant from its last checkpoint under --runs, if it has one")
    parser.add_argument("--init", nargs="+", default=[], metavar="VARIANT=PATH",
                        help="a variant's own student init (model.init_args.init_from)")
    parser.add_argument("--set", nargs=argparse.REMAINDER, default=[], dest="extra",
                        help="cf-fit overrides for every variant (last option: everything after it)")
    args = parser.parse_args()
    inits = variant_inits(args.init)
    args.runs.mkdir(parents=True, exist_ok=True)
    pending = list(args.only)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            own = ["--model.init_args.init_from", inits[name]] if name in inits else []
            running.append((name, launch(name, VARIANTS[name], args.runs, args.steps, args.seed,
                                          args.extra + own, args.resume)))
        name, process = running.pop(0)
        if process.wait():
            raise SystemExit(f"{name} failed; see {args.runs / (name + '.log')}")
    students = [f"{n}={args.runs / 'results' / n / 'checkpoints' / 'last.ckpt'}" for n in args.only]
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "revisit.py"),
            *students,
            "--videos",
            str(args.videos),
            "--out",
            str(args.runs),
        ],
        check=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


if __name__ == "__main__":
    main()
