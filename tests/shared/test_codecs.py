"""Torch-free shared modules: scalar codec, aggregation, integer steps, seed assignment."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedfed.shared import philox
from seedfed.shared.aggregate import aggregate
from seedfed.shared.assignment import group_of, pro_probabilities, uniform_seeds, weighted_seeds
from seedfed.shared.quantize import BYTE_MAX, ScalarError, decode_bytes, decode_scalars, encode_scalar, encode_scalars
from seedfed.shared.steps import MAX_STEP, StepError, fold, integer_steps, round_step

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)
unit_interval = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


# -- one byte per scalar ---------------------------------------------------------------


@settings(deadline=None)
@given(value=finite, u=unit_interval, scale=st.sampled_from([0.001, 0.05, 1.0]))
def test_encode_is_a_clipped_stochastic_rounding(value, u, scale):
    b = encode_scalar(value, scale, u)
    assert -BYTE_MAX <= b <= BYTE_MAX
    x = value / scale
    if -BYTE_MAX < x < BYTE_MAX:
        assert b in (math.floor(x), math.ceil(x))
    assert decode_scalars(encode_scalars([value], scale, [u]), scale) == [b * scale]


def test_stochastic_rounding_is_unbiased():
    us = [philox.draw_uniform((1, 2), i, 0, philox.STREAM_SCALAR_ROUNDING) for i in range(20000)]
    for x in (0.3, -2.75, 100.1):
        mean = statistics.fmean(encode_scalar(x, 1.0, u) for u in us)
        assert abs(mean - x) < 0.02


def test_nan_and_inf_are_rejected():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ScalarError):
            encode_scalar(bad, 0.05, 0.5)
    with pytest.raises(ValueError):
        encode_scalars([1.0, 2.0], 0.05, [0.5])


def test_byte_layout_is_twos_complement_and_symmetric():
    packed = encode_scalars([1e9, -1e9, 0.0, -0.5], 1.0, [0.0, 0.0, 0.0, 0.0])
    assert packed == bytes([127, 0x81, 0, 0xFF])
    assert decode_bytes(packed) == [127, -127, 0, -1]
    assert len(encode_scalars([0.1] * 10, 0.05, [0.5] * 10)) == 10  # one byte each


# -- aggregation ---------------------------------------------------------------------


def test_aggregation_rules():
    vals = [1.0, 2.0, 3.0, 4.0, 100.0]
    assert aggregate(vals, "mean") == 22.0
    assert aggregate(vals, "median") == 3.0
    assert aggregate(vals, "trimmed_mean", 0.2) == 3.0  # one cut from each end
    assert aggregate([5.0], "trimmed_mean", 0.4) == 5.0
    assert aggregate([1.0, 2.0], "median") == 1.5


@settings(deadline=None)
@given(st.lists(finite, min_size=1, max_size=30), st.sampled_from(["mean", "median", "trimmed_mean"]))
def test_aggregate_lies_within_the_reports_and_ignores_order(vals, rule):
    a = aggregate(vals, rule)
    assert min(vals) - 1e-6 <= a <= max(vals) + 1e-6
    assert a == aggregate(list(reversed(sorted(vals))), rule) or math.isclose(
        a, aggregate(sorted(vals), rule), rel_tol=1e-12, abs_tol=1e-9
    )


def test_median_and_trimmed_mean_resist_a_byzantine_minority():
    honest = [0.1, 0.12, 0.09, 0.11, 0.1, 0.1, 0.13, 0.08]
    attacked = honest + [1e6, 1e6]
    assert abs(aggregate(attacked, "median") - 0.1) < 0.05
    assert abs(aggregate(attacked, "trimmed_mean", 0.2) - 0.1) < 0.05
    assert aggregate(attacked, "mean") > 1000


def test_aggregate_errors():
    with pytest.raises(ValueError):
        aggregate([], "mean")
    with pytest.raises(ValueError, match="unknown"):
        aggregate([1.0], "mode")


# -- integer steps ---------------------------------------------------------------------


def test_round_step_is_deterministic_and_unbiased():
    assert round_step(2.5, 1, 2, 3) == round_step(2.5, 1, 2, 3)
    qs = [round_step(0.3, 7, s, r) for s in range(100) for r in range(100)]
    assert set(qs) <= {0, 1}
    assert abs(statistics.fmean(qs) - 0.3) < 0.02
    assert round_step(5.0, 1, 1, 1) == 5  # integers stay put


def test_round_step_refuses_bad_steps():
    with pytest.raises(StepError):
        round_step(math.nan, 1, 1, 1)
    with pytest.raises(StepError):
        round_step(math.inf, 1, 1, 1)
    with pytest.raises(StepError, match="exceeds"):
        round_step(float(MAX_STEP) * 4, 1, 1, 1)


def test_integer_steps_sum_per_seed_sort_and_drop_zeros():
    steps = integer_steps([(5, 1.0), (2, -0.5), (5, 1.0), (9, 0.0)], lr=1e-3, unit=2.0**-20, task_seed=3, round_no=4)
    assert list(steps) == sorted(steps)
    assert 9 not in steps
    assert steps[5] in (-2098, -2097)  # -lr * 2.0 / unit = -2097.152
    assert steps[2] in (524, 525)
    again = integer_steps([(2, -0.5), (5, 2.0)], lr=1e-3, unit=2.0**-20, task_seed=3, round_no=4)
    assert again == steps


@settings(deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 20), st.integers(-5, 5), max_size=6), max_size=10))
def test_fold_equals_elementwise_sum(rounds):
    folded = fold(rounds)
    for seed in range(21):
        assert folded.get(seed, 0) == sum(r.get(seed, 0) for r in rounds)
    assert 0 not in folded.values()
    assert list(folded) == sorted(folded)


# -- seed assignment ---------------------------------------------------------------------


def test_uniform_seeds_are_deterministic_and_in_the_pool():
    a = uniform_seeds(11, 3, 0, 50, 64)
    assert a == uniform_seeds(11, 3, 0, 50, 64)
    assert all(0 <= s < 64 for s in a)
    assert a != uniform_seeds(11, 3, 1, 50, 64)  # groups differ
    assert a != uniform_seeds(11, 4, 0, 50, 64)  # rounds differ
    unbounded = uniform_seeds(11, 3, 0, 5, 0)
    assert all(0 <= s < 2**32 for s in unbounded) and len(set(unbounded)) == 5


def test_group_of():
    assert [group_of(s, 3) for s in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    assert group_of(99, 0) == 0


def test_pro_probabilities():
    p = pro_probabilities([0.1, None, 0.3, 0.2])
    assert math.isclose(sum(p), 1.0)
    assert p[2] == max(p) and p[0] == min(p)
    assert pro_probabilities([None, None]) == [0.5, 0.5]
    assert pro_probabilities([1.0, 1.0, 1.0]) == pytest.approx([1 / 3] * 3)


def test_weighted_seeds_follow_the_probabilities():
    probs = [0.1, 0.0, 0.9]
    seeds = weighted_seeds(5, 1, 0, 3000, probs)
    assert seeds == weighted_seeds(5, 1, 0, 3000, probs)
    assert seeds.count(1) == 0
    assert 0.85 < seeds.count(2) / 3000 < 0.95


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 10**6), st.integers(1, 4096))
def test_uniform_seeds_property(task_seed, round_no, pool):
    seeds = uniform_seeds(task_seed, round_no, 0, 4, pool)
    assert len(seeds) == 4 and all(0 <= s < pool for s in seeds)
