"""The loss guard: a window whose loss rose rolls back to the best window's weights and halves the lr."""

from __future__ import annotations

import dataclasses
import random

import pytest
from loadclient import make_spec

from seedfed.shared.loss_guard import MAX_HALVINGS, LossGuard, round_loss
from seedfed.shared.steps import fold
from seedfed.shared.taskspec import TaskSpec, TaskSpecError


def feed(guard: LossGuard, losses: list[float], rng: random.Random, first: int = 1) -> list[dict[int, int]]:
    """Commit one round per loss, as compute_commit would: the guard's undo where it
    gives one, else some random steps. Returns the committed entries."""
    committed = []
    for round_no, loss in enumerate(losses, first):
        entries = guard.undo(round_no, loss)
        if entries is None:
            entries = {rng.randrange(64): rng.choice([-3, -1, 2, 5]) for _ in range(3)}
        guard.record(round_no, loss, entries)
        committed.append(entries)
    return committed


def test_a_rise_takes_the_weights_back_to_the_best_window_and_halves_the_lr() -> None:
    rng = random.Random(1)
    guard = LossGuard(guard_rounds=4, guard_z=3.0)
    level = [1.0 + rng.uniform(-0.01, 0.01) for _ in range(8)]
    lower = [0.9 + rng.uniform(-0.01, 0.01) for _ in range(4)]
    risen = [1.3 + rng.uniform(-0.01, 0.01) for _ in range(4)]
    committed = feed(guard, level + lower + risen, rng)
    assert guard.rollbacks == [16] and guard.halvings == 1 and guard.lr_factor() == 0.5
    # round 16 undid rounds 13..15: the weights are those round 12 (the best window's end) left
    assert committed[15] == {s: -q for s, q in fold(committed[12:15]).items()}
    assert fold(committed[12:16]) == {}
    # the next window starts from there; a level one is no rise against the best
    feed(guard, [0.9 + rng.uniform(-0.01, 0.01) for _ in range(4)], rng, first=17)
    assert guard.rollbacks == [16]


def test_noise_alone_does_not_roll_back() -> None:
    rng = random.Random(2)
    guard = LossGuard(guard_rounds=10, guard_z=4.0)
    feed(guard, [rng.gauss(1.0, 0.2) for _ in range(1000)], rng)
    assert guard.rollbacks == [] and guard.lr_factor() == 1.0


def test_the_guard_stands_aside_after_its_last_halving() -> None:
    rng = random.Random(3)
    guard = LossGuard(guard_rounds=2, guard_z=2.0)
    # every other window rises far above the first one
    losses = [1.0 + (0.5 if (r // 2) % 2 else 0.0) + rng.uniform(0, 0.01) for r in range(40)]
    feed(guard, losses, rng)
    assert len(guard.rollbacks) == MAX_HALVINGS and guard.lr_factor() == 2.0**-MAX_HALVINGS


def test_rounds_without_a_reported_loss_do_not_count() -> None:
    rng = random.Random(4)
    guard = LossGuard(guard_rounds=4, guard_z=3.0)
    feed(guard, [1.0, 1.01, 0.99, 1.0], rng)
    committed = feed(guard, [None, None, None, float("nan")], rng, first=5)  # imported rounds, say
    assert guard.rollbacks == [] and all(committed)


def test_a_round_loss_is_the_median_of_the_reported_ones() -> None:
    honest = [0.61, 0.58, 0.66, 0.60, 0.63]
    liars = [1e300, -1e300]  # a minority far out either way moves it no further than the honest reports reach
    assert min(honest) <= round_loss(honest[:3] + liars[:1]) <= max(honest)
    assert min(honest) <= round_loss(honest + liars + [1e300]) <= max(honest)
    assert round_loss([None, float("nan"), 0.5]) == 0.5 and round_loss([None]) is None


def test_the_guard_is_in_the_genesis_only_when_on() -> None:
    off = make_spec()
    assert "guard_rounds" not in off.to_dict() and "guard_z" not in off.to_dict()
    on = dataclasses.replace(off, guard_rounds=100, guard_z=3.5).validate()
    assert TaskSpec.from_canonical(on.canonical_bytes()) == on
    assert on.genesis_hash() != off.genesis_hash()
    assert LossGuard.for_spec(off) is None and LossGuard.for_spec(on).every == 100


@pytest.mark.parametrize("fields", [{"guard_rounds": -1}, {"guard_z": 0.0}, {"guard_z": float("inf")}])
def test_a_bad_guard_is_refused_by_name(fields: dict) -> None:
    with pytest.raises(TaskSpecError, match=next(iter(fields))):
        dataclasses.replace(make_spec(), **fields).validate()
