"""The claim table (benchmarks/claim.py): run roots with labels, cache keys that old caches still
match, and each row's effective context set against the Slow-Fast student of its own runs."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import claim  # noqa: E402


def result(context: int) -> dict:
    return {"error": [0.1, 0.2], "control": [1.0, 1.0], "count": [10, 20], "effective_context": context,
            "auc": 0.5}


def test_a_run_root_may_carry_a_label():
    plain, labelled = claim.Runs.parse("runs/claim"), claim.Runs.parse("student init=runs/first")
    assert (plain.label, plain.path) == ("", Path("runs/claim"))
    assert (labelled.label, labelled.path) == ("student init", Path("runs/first"))
    checkpoint = Path("runs/first/seed2/results/slow_fast/checkpoints/last.ckpt")
    assert labelled.checkpoint(2, "slow_fast") == checkpoint
    assert (plain.row("slow_fast"), labelled.row("slow_fast")) == ("slow_fast", "slow_fast (student init)")


def test_unlabelled_cache_keys_are_the_ones_written_before_labels():
    key = claim.Runs.parse("runs/claim").cache_key("recipe", "slow_fast", 0, 320)
    assert key == "recipe_slow_fast_seed0_320.json"
    key = claim.Runs.parse("student init=runs/first").cache_key("recipe", "slow_fast", 0, 320)
    assert key == "recipe_student_init_slow_fast_seed0_320.json"


def test_each_row_is_set_against_the_slow_fast_student_of_its_own_runs():
    roots = [claim.Runs.parse("a=runs/a"), claim.Runs.parse("b=runs/b")]
    contexts = {"a": {"slow_fast": 96, "short_teacher": 16}, "b": {"slow_fast": 32, "short_teacher": 16}}
    variants = ("slow_fast", "short_teacher")
    results = {r.row(v): [result(contexts[r.label][v])] for r in roots for v in variants}
    reference = {r.row(v): r.row("slow_fast") for r in roots for v in variants}
    world = claim.World({}, 16, [0, 8, 16], "a test world")
    table = claim.world_table("test", world, results, reference, [0, 3], videos=4)
    last_cell = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[-1]
                 for line in table.splitlines() if line.startswith(("| slow_fast", "| short_teacher"))}
    assert last_cell == {"slow_fast (a)": "1.00", "short_teacher (a)": "0.17", "slow_fast (b)": "1.00",
                         "short_teacher (b)": "0.50"}
