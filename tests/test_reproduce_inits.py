"""``scripts/reproduce_results.py --init``: each variant may start from its own student init."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import reproduce_results  # noqa: E402


def test_each_named_variant_gets_its_own_init() -> None:
    inits = reproduce_results.variant_inits(["short_teacher=a/short.ckpt", "slow_fast=b/ctx.ckpt"])
    assert inits == {"short_teacher": "a/short.ckpt", "slow_fast": "b/ctx.ckpt"}


@pytest.mark.parametrize("pair", ["short=a.ckpt", "slow_fast", "slow_fast="])
def test_a_malformed_or_unknown_init_is_refused_by_name(pair: str) -> None:
    with pytest.raises(SystemExit, match=f"--init '{pair}': expected VARIANT=PATH with VARIANT one of "
                                         "slow_fast, sliding_window, short_teacher"):
        reproduce_results.variant_inits([pair])
