"""A `cf-fit` run SIGKILLed in the middle of training resumes from its last checkpoint and logs the
same losses, step by step, as an uninterrupted run with the same seed; `--ckpt_path auto` and
Lightning's `last` stay in their run directory and refuse another stage's checkpoint."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cf_lightning.cli.fit import main
from tests.cli_helpers import RECIPES, ROOT, TINY_DATA, TINY_DISTILL

EVERY = 3  # batches between checkpoints
#: recipe, tiny overrides, batches to train (two epochs of 4 batches), optimizer steps they take
STAGES = {
    # critic every batch, generator every 2nd; the rollout curriculum grows over the run
    "context_forcing": (RECIPES / "slowfast.yaml",
                        [*TINY_DISTILL, "--model.rollout.curriculum_steps", "4"], 12),
    # context modes drawn per sample, ERFT error banks filled and sampled
    "context_teacher_erft": (RECIPES / "context_teacher.yaml",
                             [*TINY_DATA, "--model.backbone", "tiny", "--data.clip_frames", "16",
                              "--trainer.log_every_n_steps", "1"], 8),
}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The killed run is another process with one thread; this one must sum in the same order."""
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli_args(tmp_path: Path, stage: str, version: str | None, every: int = EVERY,
             kill_at: int | None = None) -> list[str]:
    """`cf-fit fit` arguments for a tiny run; ``kill_at`` adds a callback that SIGKILLs the run as that
    training batch (0-based) starts: only for runs in another process."""
    recipe, tiny, steps = STAGES[stage]
    overlay = tmp_path / f"{stage}-{version}{'-killed' if kill_at is not None else ''}.yaml"
    logger = {"save_dir": str(tmp_path / "runs"), "name": stage, "flush_logs_every_n_steps": 1}
    if version is not None:
        logger["version"] = version
    overlay.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": steps,
                    "limit_val_batches": 0,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": logger},
                    "callbacks": [
                        {
                            "class_path": "cf_lightning.callbacks.RunCheckpoint",
                            "init_args": {"every_n_batches": every},
                        },
                        *(
                            [{"class_path": "tests.sigkill.SigkillAtBatch", "init_args": {"batch": kill_at}}]
                            if kill_at is not None
                            else []
                        ),
                    ],
                }
            }
        )
    )
    return ["fit", "--config", str(recipe), *tiny, "--config", str(overlay)]


def losses(metrics: Path) -> dict[int, dict[str, float]]:
    """Training scalars per logged step from a CSVLogger file (rows still being written are skipped)."""
    if not metrics.is_file():
        return {}
    rows = {}
    for row in csv.DictReader(metrics.read_text().splitlines()):
        values = {k: float(v) for k, v in row.items() if k and k.startswith("train/") and v}
        if values and (row.get("step") or "").isdigit():
            rows[int(row["step"])] = values
    return rows


def saved_batches(run: Path) -> list[int]:
    return [int(p.stem.split("=")[1]) for p in (run / "checkpoints").glob("batch=*.ckpt")]


def run_until_killed(cmd: list[str], log: Path) -> None:
    """Run `cf-fit` in another process; its arguments carry the callback that SIGKILLs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        code = subprocess.run([sys.executable, "-m", "cf_lightning.cli.fit", *cmd],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    assert code == -signal.SIGKILL, f"the run was not killed (exit code {code}):\n{log.read_text()[-3000:]}"


def assert_same(a: object, b: object, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max |difference| {float((a.double() - b.double()).abs().max())}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkilled_run_resumes_with_the_losses_of_an_uninterrupted_run(stage, tmp_path):
    runs = tmp_path / "runs" / stage
    # killed two batches past the first checkpoint: the resumed run redoes batches the killed one logged
    kill_at = EVERY + 2
    run_until_killed(cli_args(tmp_path, stage, "killed", kill_at=kill_at), tmp_path / "killed.log")
    checkpointed = max(saved_batches(runs / "killed"))
    assert checkpointed == EVERY, f"the kill at batch {kill_at} should follow the checkpoint at batch {EVERY}"
    before_kill = losses(runs / "killed" / "metrics.csv")
    assert max(before_kill) >= checkpointed, "training went on past the checkpoint before the kill"

    main([*cli_args(tmp_path, stage, "killed"), "--ckpt_path", "auto"])
    resumed = losses(runs / "killed" / "metrics.csv")
    main(cli_args(tmp_path, stage, "uninterrupted"))
    reference = losses(runs / "uninterrupted" / "metrics.csv")

    assert sorted(reference) == list(range(8))
    assert min(resumed) == checkpointed and max(resumed) == 7, "resumed right after the checkpointed batch"
    compared = set()
    for step, values in [*before_kill.items(), *resumed.items()]:
        # Lightning repeats a scalar in later rows until it is logged again (the DMD loss on critic-only
        # steps); the first row after a resume has no earlier value to repeat, so compare shared keys.
        shared = values.keys() & reference[step].keys()
        assert {k: values[k] for k in shared} == {k: reference[step][k] for k in shared}, f"step {step}"
        compared |= shared
    assert compared >= {"train/dmd_loss", "train/critic_loss"} or compared >= {"train/loss"}
    final = [torch.load(runs / run / "checkpoints" / "last.ckpt", weights_only=True)
             for run in ("killed", "uninterrupted")]
    for key in ("state_dict", "optimizer_states", "global_step", "callbacks", "draw_generator", "erft",
                "teacher_generator"):
        assert (key in final[0]) == (key in final[1])
        if key in final[0]:
            assert_same(final[0][key], final[1][key], key)


@pytest.mark.parametrize("alias", ["auto", "last"])
def test_resume_alias_starts_fresh_then_continues_its_own_run(alias, tmp_path):
    """``last`` is Lightning's own alias (RunCheckpoint is a ModelCheckpoint), ``auto`` ours."""
    args = [*cli_args(tmp_path, "context_teacher_erft", "a", every=1), "--ckpt_path", alias]
    main([*args, "--trainer.max_steps", "2"])
    main([*args, "--trainer.max_steps", "4"])
    run = tmp_path / "runs" / "context_teacher_erft" / "a"
    assert sorted(losses(run / "metrics.csv")) == [2, 3], "the second launch trained steps 3 and 4 only"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_auto_resume_needs_a_fixed_run_directory(tmp_path):
    with pytest.raises(ValueError, match="CSVLogger has no fixed version.*trainer.logger.init_args.version"):
        main([*cli_args(tmp_path, "context_teacher_erft", None), "--ckpt_path", "auto"])


def test_stage_2_refuses_a_stage_1_checkpoint(tmp_path):
    stage_1 = ["fit", "--config", str(RECIPES / "student_init.yaml"), *TINY_DATA, "--model.backbone", "tiny",
               "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path / "s1"),
               "--trainer.logger", "false"]
    main(stage_1)
    student = next((tmp_path / "s1").rglob("*.ckpt"))
    stage_2 = ["fit", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL, "--trainer.logger", "false",
               "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path / "s2")]
    expected = r"written by cf_lightning\.stages\.StudentModule, but this run trains .*ContextForcingModule"
    with pytest.raises(ValueError, match=expected):
        main([*stage_2, "--ckpt_path", str(student)])
    (tmp_path / "s2" / "checkpoints").mkdir(parents=True)
    shutil.copy(student, tmp_path / "s2" / "checkpoints" / "last.ckpt")
    for alias in ("auto", "last"):
        with pytest.raises(ValueError, match=expected):
            main([*stage_2, "--ckpt_path", alias])
