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


def test_window_start_takes_the_weights_back_to_where_the_best_window_began() -> None:
    rng = random.Random(1)
    guard = LossGuard(guard_rounds=4, guard_z=3.0, guard_return="window_start")
    level = [1.0 + rng.uniform(-0.01, 0.01) for _ in range(8)]
    lower = [0.9 + rng.uniform(-0.01, 0.01) for _ in range(4)]
    risen = [1.3 + rng.uniform(-0.01, 0.01) for _ in range(4)]
    committed = feed(guard, level + lower + risen, rng)
    assert guard.rollbacks == [16] and guard.lr_factor() == 0.5
    # round 16 undid rounds 9..15: the weights are those the best window (rounds 9..12) started from
    assert committed[15] == {s: -q for s, q in fold(committed[8:15]).items()}
    assert fold(committed[8:16]) == {}


def test_damage_inside_the_first_window_goes_back_to_the_base_weights_only_with_window_start() -> None:
    # the first window's loss is the lowest, but its steps already did the damage the next window shows
    losses = [0.60, 0.61, 0.60, 0.61] + [0.70, 0.71, 0.70, 0.71]
    to_end, to_start = LossGuard(4, 2.0), LossGuard(4, 2.0, "window_start")
    by_end, by_start = feed(to_end, losses, random.Random(5)), feed(to_start, losses, random.Random(5))
    # the same rise is seen at the same round; only where it returns differs
    assert to_end.rollbacks == to_start.rollbacks == [8] and by_end[:7] == by_start[:7]
    assert fold(by_end[4:8]) == {} and fold(by_end) == fold(by_end[:4]) != {}
    assert fold(by_start) == {}  # the base weights, bit for bit


@pytest.mark.parametrize("guard_return", ["window_end", "window_start"])
def test_remeasure_holds_the_restored_weights_to_their_own_window_not_the_lucky_best(guard_return: str) -> None:
    rng = random.Random(6)

    def noisy(level: float, n: int = 4) -> list[float]:
        return [level + rng.uniform(-0.01, 0.01) for _ in range(n)]

    # the window of rounds 9..12 sits low by chance; the damage at 13..16 is rolled back at 16, and
    # from then on the weights give their true level, above that lucky window
    losses = noisy(1.0, 8) + noisy(0.95) + noisy(1.3) + noisy(1.0, 12)
    held, remeasured = LossGuard(4, 2.0, guard_return), LossGuard(4, 2.0, guard_return, remeasure=True)
    feed(held, losses, random.Random(7))
    committed = feed(remeasured, losses, random.Random(7))
    # held to the lucky window, every later window "rose" and halved the lr until the guard gave up
    assert held.rollbacks == [16, 20, 24, 28] and held.lr_factor() == 2.0**-MAX_HALVINGS
    assert remeasured.rollbacks == [16] and remeasured.lr_factor() == 0.5
    # a real rise is still caught, against the window after the rollback, and returns there
    committed += feed(remeasured, noisy(1.3), random.Random(8), first=29)
    assert remeasured.rollbacks == [16, 32]
    since = 16 if guard_return == "window_start" else 20  # rounds 17..20 form the reference window
    assert fold(committed[since:32]) == {} and committed[since - 1] and fold(committed[since - 1 : 32]) != {}


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
    assert not {"guard_rounds", "guard_z", "guard_return", "guard_remeasure"} & set(off.to_dict())
    on = dataclasses.replace(off, guard_rounds=100, guard_z=3.5).validate()
    assert TaskSpec.from_canonical(on.canonical_bytes()) == on
    assert on.genesis_hash() != off.genesis_hash()
    assert LossGuard.for_spec(off) is None and LossGuard.for_spec(on).every == 100
    # a genesis written before guard_return existed keeps its hash: window_end is left out
    assert "guard_return" not in on.to_dict()
    to_start = dataclasses.replace(on, guard_return="window_start").validate()
    assert to_start.to_dict()["guard_return"] == "window_start"
    assert TaskSpec.from_canonical(to_start.canonical_bytes()) == to_start
    assert to_start.genesis_hash() != on.genesis_hash() and LossGuard.for_spec(to_start).to_start
    # likewise guard_remeasure, left out while false
    assert "guard_remeasure" not in on.to_dict()
    remeasure = dataclasses.replace(on, guard_remeasure=True).validate()
    assert remeasure.to_dict()["guard_remeasure"] is True and LossGuard.for_spec(remeasure).remeasure
    assert TaskSpec.from_canonical(remeasure.canonical_bytes()) == remeasure
    assert remeasure.genesis_hash() != on.genesis_hash()


def test_guard_remeasure_must_be_a_boolean() -> None:
    raw = {**make_spec(guard_rounds=10).to_dict(), "guard_remeasure": "yes"}
    with pytest.raises(TaskSpecError, match="guard_remeasure must be of type bool"):
        TaskSpec.from_dict(raw)


@pytest.mark.parametrize(
    "fields", [{"guard_rounds": -1}, {"guard_z": 0.0}, {"guard_z": float("inf")}, {"guard_return": "window_middle"}]
)
def test_a_bad_guard_is_refused_by_name(fields: dict) -> None:
    with pytest.raises(TaskSpecError, match=next(iter(fields))):
        dataclasses.replace(make_spec(), **fields).validate()
