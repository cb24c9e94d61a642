"""The arithmetic of a round, without I/O."""

from __future__ import annotations

import random

import pytest
from coord_helpers import make_spec
from hypothesis import given, settings
from hypothesis import strategies as st

from seedfed.shared.assignment import uniform_seeds
from seedfed.shared.round_math import Submission, compute_commit, group_count, plan_round
from seedfed.shared.steps import integer_steps


def test_plan_gives_slots_in_order_and_seeds_per_group() -> None:
    spec = make_spec(group_size=2, local_steps=3, pool_size=50)
    plan = plan_round(spec, 7, 1, ["a", "b", "c", "d", "e"], {}, 100.0)
    assert plan.slots == ("a", "b", "c", "d", "e") and group_count(5, 2) == 3
    assert [plan.group_of_slot(s) for s in range(5)] == [0, 0, 1, 1, 2]
    for g in range(3):
        assert plan.group_seeds[g] == tuple(uniform_seeds(spec.task_seed, 7, g, 3, 50))
    assert plan.deadline == 100.0 + spec.round_deadline_s and plan.lr == spec.lr_at(7)
    assert plan_round(spec, 7, 2, ["a", "b", "c", "d", "e"], {}, 100.0).group_seeds == plan.group_seeds


def test_commit_aggregates_in_groups_and_averages_over_groups() -> None:
    spec = make_spec(group_size=2, local_steps=2, pool_size=1000, aggregation="median", scalar_scale=0.5)
    plan = plan_round(spec, 3, 1, ["a", "b", "c", "d"], {}, 0.0)
    subs = [
        Submission("a", 0, bytes([2, 4]), 1.0, 0.0),
        Submission("b", 1, bytes([4, 0xFC]), 3.0, 0.0),  # 0xFC = -4
        Submission("c", 2, bytes([10, 10]), None, 0.0),  # group 1 reports once (d is silent)
    ]
    result = compute_commit(spec, plan, subs, b"\0" * 32)
    g0, g1 = plan.group_seeds
    # median of two values is their mean; two groups reported
    expected = integer_steps(
        [(g0[0], (1.0 + 2.0) / 2 / 2), (g0[1], (2.0 - 2.0) / 2 / 2), (g1[0], 5.0 / 2), (g1[1], 5.0 / 2)],
        lr=plan.lr,
        unit=spec.unit,
        task_seed=spec.task_seed,
        round_no=3,
    )
    assert result.record.entries == expected
    assert result.submissions_counted == 3 and result.mean_loss == 2.0
    assert result.seed_abs[g1[0]][0] >= 5.0


def test_spread_rule_divides_the_steps_by_the_median_report_size_and_clips_reports() -> None:
    clients = ["a", "b", "c"]
    subs = [Submission("a", 0, bytes([4]), None, 0.0), Submission("b", 1, bytes([6]), None, 0.0)]
    subs.append(Submission("c", 2, bytes([127]), None, 0.0))  # one huge report moves a median little
    spread = 6 * 0.5  # the median |byte| of the round, at its scale
    cases = {  # (step_rule, step_clip): (aggregated scalar, lr divisor)
        ("constant", 1.0): ((4 + 6 + 127) / 3 * 0.5, 1.0),
        ("spread", 0.0): ((4 + 6 + 127) / 3 * 0.5, spread),
        ("spread", 1.0): ((2.0 + 3.0 + 3.0) / 3, spread),  # each report clipped at one spread
        ("spread", 0.5): ((1.5 + 1.5 + 1.5) / 3, spread),
    }
    results = set()
    for (rule, clip), (aggregated, divisor) in cases.items():
        spec = make_spec(step_rule=rule, step_clip=clip, pool_size=1000, scalar_scale=0.5, lr=1e-3)
        plan = plan_round(spec, 2, 1, clients, {}, 0.0)
        entries = compute_commit(spec, plan, subs, b"\0" * 32).record.entries
        seed = plan.group_seeds[0][0]
        lr = plan.lr / divisor
        assert entries == integer_steps([(seed, aggregated)], lr=lr, unit=spec.unit, task_seed=spec.task_seed, round_no=2)
        results.add(tuple(entries.items()))
    assert len(results) == len(cases)


def test_spread_rule_counts_an_all_zero_round_as_one_byte() -> None:
    spec = make_spec(step_rule="spread", pool_size=1000, scalar_scale=0.5)
    plan = plan_round(spec, 2, 1, ["a"], {}, 0.0)
    assert compute_commit(spec, plan, [Submission("a", 0, bytes([0]), None, 0.0)], b"\0" * 32).record.entries == {}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=9), st.randoms(use_true_random=False))
def test_commit_does_not_depend_on_arrival_order(payloads: list[bytes], rnd: random.Random) -> None:
    spec = make_spec(group_size=3, local_steps=4, pool_size=64, aggregation="trimmed_mean")
    clients = [f"c{i}" for i in range(len(payloads))]
    plan = plan_round(spec, 5, 1, clients, {}, 0.0)
    subs = [
        Submission(c, i, bytes(b if b != 0x80 else 0 for b in p), None, 0.0) for i, (c, p) in enumerate(zip(clients, payloads))
    ]
    shuffled = subs[:]
    rnd.shuffle(shuffled)
    assert compute_commit(spec, plan, subs, b"\1" * 32) == compute_commit(spec, plan, shuffled, b"\1" * 32)


def test_weighting_by_examples_counts_each_report_by_its_clients_claim() -> None:
    clients = ["a", "b", "c"]
    # a and b hold 100 examples each and report +8; c holds 1,000 and reports -8
    subs = [
        Submission("a", 0, bytes([8]), None, 0.0, 100),
        Submission("b", 1, bytes([8]), None, 0.0, 100),
        Submission("c", 2, bytes([0xF8]), None, 0.0, 1000),  # 0xF8 = -8
    ]
    equal = make_spec(scalar_scale=0.5, local_steps=1)
    weighted = make_spec(scalar_scale=0.5, local_steps=1, weighting="examples")
    plan = plan_round(weighted, 1, 1, clients, {}, 0.0)
    (seed,) = plan.group_seeds[0]

    def steps(aggregated: float) -> dict[int, int]:
        return integer_steps([(seed, aggregated)], lr=plan.lr, unit=equal.unit, task_seed=equal.task_seed, round_no=1)

    assert compute_commit(equal, plan, subs, b"\0" * 32).record.entries == steps((4 + 4 - 4) / 3)
    # c's 1,000 counts as 400: four times the median claim (100)
    assert compute_commit(weighted, plan, subs, b"\0" * 32).record.entries == steps((100 * 4 + 100 * 4 - 400 * 4) / 600)


def test_weighting_leaves_a_report_without_a_claim_at_the_median() -> None:
    from seedfed.shared.aggregate import example_weights

    assert example_weights([10, 30, 0]) == [10.0, 30.0, 20.0]
    assert example_weights([0, 0]) == [1.0, 1.0]
    assert example_weights([1, 1, 1_000_000]) == [1.0, 1.0, 4.0]


def test_weighted_screened_mean_weighs_the_clipped_reports() -> None:
    from seedfed.shared.aggregate import clipped_mean

    rows = [[1.0], [2.0], [3.0], [100.0]]
    # 100 is clipped to the median (2.5) plus 6 typical distances (the median distance, 1.0)
    assert clipped_mean(rows, 6.0, 0.01) == [pytest.approx((1 + 2 + 3 + 8.5) / 4)]
    assert clipped_mean(rows, 6.0, 0.01, [1.0, 1.0, 2.0, 0.0]) == [pytest.approx((1 + 2 + 2 * 3) / 4)]
