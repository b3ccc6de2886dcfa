"""Every built-in policy passes the public contract, in each position mode it supports."""

from __future__ import annotations

import pytest

from memory_policies import Full, Keyframe, SlidingWindow, SlowFast
from memory_policies.testing import PolicyContract


class TestFull(PolicyContract):
    recent = 10**9

    def make_policy(self):
        return Full()


class TestSlidingWindow(PolicyContract):
    recent = 3  # window 6 minus the largest chunk

    def make_policy(self):
        return SlidingWindow(sink=2, window=6, position_mode="bounded", rope_length=8)


class TestSlidingWindowAbsolute(TestSlidingWindow):
    recent = 2

    def make_policy(self):
        return SlidingWindow(sink=0, window=5, position_mode="absolute")


class TestSlowFastSurprisal(PolicyContract):
    recent = 3

    def make_policy(self):
        return SlowFast(sink=2, slow=4, fast=6, threshold=0.9, rope_length=12)


class TestSlowFastUniformTrueTime(PolicyContract):
    recent = 3

    def make_policy(self):
        return SlowFast(sink=1, slow=3, fast=6, admission="uniform", interval=1, position_mode="true_time",
                        rope_length=10)


class TestSlowFastLastAdmittedAbsolute(PolicyContract):
    recent = 3

    def make_policy(self):
        return SlowFast(
            sink=3, slow=5, fast=6, threshold=0.5, compare_to="last_admitted", position_mode="absolute"
        )


class TestKeyframe(PolicyContract):
    recent = 1

    def make_policy(self):
        return Keyframe(sink=1, keyframes=4, window=4, rope_length=9)


@pytest.mark.parametrize("mode", ["bounded", "true_time"])
def test_unbounded_policy_rejects_bounded_positions(mode):
    with pytest.raises(ValueError, match="unbounded"):
        Full(position_mode=mode).new_state(3)


def test_contract_catches_a_policy_that_claims_fixed_positions_but_repacks_them():
    class Repacking(SlidingWindow):
        fixed_positions = True  # wrong: bounded positions move every chunk

    class Contract(PolicyContract):
        def make_policy(self):
            return Repacking(sink=1, window=4, position_mode="bounded", rope_length=6)

    with pytest.raises(AssertionError):
        Contract().test_fixed_positions_hold()
