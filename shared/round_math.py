"""The pure arithmetic of a round: who probes which seeds, at what one-byte
scale, and what a round commits. No I/O, no clocks: the same inputs give the
same plan and the same record after any restart.

Some rules read earlier rounds (the adaptive scale reads the round before,
screened_mean a window of rounds): callers pass those committed rounds as
stored, plan and submissions, so a commit stays an exact function of stored
data.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from seedfed.shared.aggregate import aggregate, clipped_mean, deviations, example_weights, outlying, weighted_mean
from seedfed.shared.assignment import pro_probabilities, uniform_seeds, weighted_seeds
from seedfed.shared.ledger import RoundRecord, make_record
from seedfed.shared.loss_guard import LossGuard, round_loss
from seedfed.shared.quantize import decode_bytes
from seedfed.shared.scale import SCALE_ROUNDS, median_magnitude, next_scale
from seedfed.shared.steps import integer_steps
from seedfed.shared.taskspec import TaskSpec


@dataclass(frozen=True)
class RoundPlan:
    """What one attempt at a round asks for, fixed when it opens."""

    task_id: str
    round: int
    attempt: int
    opened_at: float
    deadline: float
    lr: float
    group_size: int
    group_seeds: tuple[tuple[int, ...], ...]  # the seeds of each group, in probing order
    slots: tuple[str, ...]  # client_id of each slot
    scalar_scale: float  # a byte b of this attempt carries b * scalar_scale

    def group_of_slot(self, slot: int) -> int:
        return 0 if self.group_size <= 0 else slot // self.group_size

    def seeds_of_slot(self, slot: int) -> tuple[int, ...]:
        return self.group_seeds[self.group_of_slot(slot)]

    def slot_of(self) -> dict[str, int]:
        return {cid: slot for slot, cid in enumerate(self.slots)}

    def group_seeds_json(self) -> str:
        return json.dumps([list(g) for g in self.group_seeds], separators=(",", ":"))

    @staticmethod
    def parse_group_seeds(text: str) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(s) for s in g) for g in json.loads(text))


@dataclass(frozen=True)
class Submission:
    client_id: str
    slot: int
    scalars: bytes
    loss: float | None
    received_at: float
    examples: int = 0  # the training examples the client holds, as it claims (0: not said)


@dataclass(frozen=True)
class CommittedRound:
    """A committed attempt as stored: what later rounds' arithmetic may read."""

    plan: RoundPlan
    submissions: Sequence[Submission]


@dataclass(frozen=True)
class CommitResult:
    """Everything a commit writes, computed from the attempt's submissions (compute_commit)."""

    record: RoundRecord
    seed_abs: dict[int, tuple[float, int]]  # seed -> (sum of |aggregate|, count) to add to the stats
    submissions_counted: int
    mean_loss: float | None
    loss: float | None  # the median reported loss: what the loss guard reads
    left_out: tuple[str, ...] = field(default=())  # screened_mean: clients whose reports did not count
    saturated: bool = False  # screened_mean: the bytes sat near +-127, so the round committed no step
    rolled_back: bool = False  # the loss guard: the round committed the undo of the steps since the best window


def history_rounds(spec: TaskSpec) -> int:
    """How many committed rounds before a round its plan and commit read."""
    need = SCALE_ROUNDS if spec.scale_rule == "adaptive" else 0
    if spec.aggregation == "screened_mean":
        need = max(need, spec.screen_rounds - 1)
    return need


def _check_history(round_no: int, history: Sequence[CommittedRound]) -> None:
    rounds = [h.plan.round for h in history]
    if rounds and rounds != list(range(round_no - len(rounds), round_no)):
        raise ValueError(f"round {round_no}: the history must be the rounds just before it, in order, not {rounds}")


def group_count(n_clients: int, group_size: int) -> int:
    if n_clients <= 0:
        return 0
    return 1 if group_size <= 0 else math.ceil(n_clients / group_size)


def seed_probabilities(spec: TaskSpec, stats: Mapping[int, tuple[float, int]]) -> list[float]:
    """FedKSeed-Pro over the finite pool: mean |aggregated scalar| per seed."""
    means: list[float | None] = [None] * spec.pool_size
    for seed, (sum_abs, count) in stats.items():
        if 0 <= seed < spec.pool_size and count > 0:
            means[seed] = sum_abs / count
    return pro_probabilities(means)


def plan_round(
    spec: TaskSpec,
    round_no: int,
    attempt: int,
    client_ids: Sequence[str],
    seed_stats: Mapping[int, tuple[float, int]],
    opened_at: float,
    history: Sequence[CommittedRound] = (),
    guard: LossGuard | None = None,
) -> RoundPlan:
    """Slots in the given (stable) order; each group's seeds from (task seed, round, group);
    the scale from the round before (adaptive) or the genesis; the lr from the
    schedule, halved once per rollback of the loss guard (fed every committed round)."""
    _check_history(round_no, history)
    scale = spec.scalar_scale
    if spec.scale_rule == "adaptive":
        rounds = [(h.plan.scalar_scale, [s.scalars for s in h.submissions]) for h in history]
        scale = next_scale(spec.scalar_scale, spec.scale_target, rounds)
    n_groups = group_count(len(client_ids), spec.group_size)
    if spec.sampling == "fedkseed_pro":
        probs = seed_probabilities(spec, seed_stats)
        groups = [weighted_seeds(spec.task_seed, round_no, g, spec.local_steps, probs) for g in range(n_groups)]
    else:
        groups = [uniform_seeds(spec.task_seed, round_no, g, spec.local_steps, spec.pool_size) for g in range(n_groups)]
    return RoundPlan(
        task_id=spec.task_id,
        round=round_no,
        attempt=attempt,
        opened_at=opened_at,
        deadline=opened_at + spec.round_deadline_s,
        lr=spec.lr_at(round_no) * (guard.lr_factor() if guard else 1.0),
        group_size=spec.group_size,
        group_seeds=tuple(tuple(g) for g in groups),
        slots=tuple(client_ids),
        scalar_scale=scale,
    )


def _groups(plan: RoundPlan, submissions: Sequence[Submission]) -> dict[int, list[Submission]]:
    by_group: dict[int, list[Submission]] = {}
    for sub in sorted(submissions, key=lambda s: s.slot):
        by_group.setdefault(plan.group_of_slot(sub.slot), []).append(sub)
    return by_group


def _values(plan: RoundPlan, sub: Submission) -> list[float]:
    return [b * plan.scalar_scale for b in decode_bytes(sub.scalars)]


def _deviations_by_client(plan: RoundPlan, submissions: Sequence[Submission]) -> dict[str, list[float]]:
    """Each client's deviations in one round, measured within its group (the clients on its seeds)."""
    out: dict[str, list[float]] = {}
    for subs in _groups(plan, submissions).values():
        for sub, devs in zip(subs, deviations([_values(plan, s) for s in subs], plan.scalar_scale)):
            out[sub.client_id] = devs
    return out


SATURATED_MEDIAN = 64  # a median |byte| above this says little but "raise the scale"


def saturated(spec: TaskSpec, plan: RoundPlan, submissions: Sequence[Submission]) -> bool:
    """The round's scale was more than two octaves too small for its bytes (or
    they sat near +-127): next to honest reports that large, an extreme one does
    not stand out. This is the first round or two, while the adaptive scale
    climbs from a genesis scale that was too small."""
    m = median_magnitude([(0, [s.scalars for s in submissions])])
    return m is not None and m[0] > min(4 * spec.scale_target, SATURATED_MEDIAN)


def left_out_clients(
    spec: TaskSpec, plan: RoundPlan, submissions: Sequence[Submission], history: Sequence[CommittedRound]
) -> set[str]:
    """screened_mean: the clients of this round whose median deviation over the
    screening window (this round and up to screen_rounds - 1 before it, saturated
    rounds left aside) is too large."""
    window = list(history)[max(0, len(history) - spec.screen_rounds + 1) :]
    scores: dict[str, list[float]] = defaultdict(list)
    for past in [*window, CommittedRound(plan, submissions)]:
        if saturated(spec, past.plan, past.submissions):
            continue
        for cid, devs in _deviations_by_client(past.plan, past.submissions).items():
            scores[cid].extend(devs)
    return {s.client_id for s in submissions if outlying(scores[s.client_id], spec.screen_threshold)}


def spread(plan: RoundPlan, submissions: Sequence[Submission]) -> float:
    """The typical size of a round's scalars (step_rule spread): the median |byte|
    of every report, at least one byte, at the round's scale. Dividing by it
    makes the step a function of how the scalars compare with each other, not of
    the loss's scale, which drifts over a run (FZOO normalises by the spread of
    its perturbations' losses). A median, so a minority of faulty reports moves it
    little. Each report is clipped at step_clip spreads before it is aggregated: the
    scalars of small minibatches are heavy-tailed, and a clipped mean of them
    carries more of the common signal than their mean (docs/decisions.md)."""
    m = median_magnitude([(0, [s.scalars for s in submissions])])
    return max(m[0] if m else 1, 1) * plan.scalar_scale


def compute_commit(
    spec: TaskSpec,
    plan: RoundPlan,
    submissions: Sequence[Submission],
    previous_hash: bytes,
    history: Sequence[CommittedRound] = (),
    guard: LossGuard | None = None,
) -> CommitResult:
    """Per group and step: aggregate the decoded scalars with the task's rule;
    divide by the number of groups that reported; integer steps by the lr
    schedule (under step_rule spread: reports clipped at step_clip spreads, lr
    divided by the round's spread) with keyed
    stochastic rounding; chain the hash. ``history``: the
    committed rounds just before this one (at least history_rounds(spec) of
    them where stored). Under screened_mean a saturated round commits no step.
    ``guard``: the task's loss guard, fed every round before this one; when it
    rolls back, the round commits its undo instead of its own steps."""
    _check_history(plan.round, history)
    screened = spec.aggregation == "screened_mean"
    weighted = spec.weighs_by_examples
    blind = screened and saturated(spec, plan, submissions)
    by_group = {} if blind else _groups(plan, submissions)
    left_out = left_out_clients(spec, plan, submissions, history) if screened and not blind else set()
    n_reporting = len(by_group)
    contributions: list[tuple[int, float]] = []
    seed_abs: dict[int, tuple[float, int]] = {}
    lr = plan.lr
    cap = math.inf
    if spec.step_rule == "spread":
        typical = spread(plan, submissions)
        lr /= typical
        cap = spec.step_clip * typical if spec.step_clip > 0 else math.inf
    for group in sorted(by_group):
        subs = by_group[group]
        rows = [[max(-cap, min(cap, v)) for v in _values(plan, s)] for s in subs]
        if screened:
            kept = [(r, s) for r, s in zip(rows, subs) if s.client_id not in left_out] or list(zip(rows, subs))
            weights = example_weights([s.examples for _, s in kept]) if weighted else None
            aggs = clipped_mean([r for r, _ in kept], spec.screen_clip, plan.scalar_scale, weights)
        elif weighted:
            weights = example_weights([s.examples for s in subs])
            aggs = [weighted_mean(column, weights) for column in zip(*rows)]
        else:
            aggs = [aggregate(column, spec.aggregation, spec.trim_fraction) for column in zip(*rows)]
        for seed, agg in zip(plan.group_seeds[group], aggs):
            contributions.append((seed, agg / n_reporting))
            a, n = seed_abs.get(seed, (0.0, 0))
            seed_abs[seed] = (a + abs(agg), n + 1)
    losses = [s.loss for s in submissions if s.loss is not None and math.isfinite(s.loss)]
    mean_loss = math.fsum(losses) / len(losses) if losses else None
    median_loss = round_loss(s.loss for s in submissions)
    undo = guard.undo(plan.round, median_loss) if guard else None
    if undo is None:
        entries = integer_steps(contributions, lr=lr, unit=spec.unit, task_seed=spec.task_seed, round_no=plan.round)
    else:
        entries = undo
    return CommitResult(
        make_record(previous_hash, plan.round, entries),
        seed_abs,
        len(submissions),
        mean_loss,
        median_loss,
        tuple(sorted(left_out)),
        blind,
        undo is not None,
    )


def recompute(
    spec: TaskSpec, stored: Iterable[CommittedRound], previous_hash: bytes
) -> Iterator[tuple[CommittedRound, RoundPlan, CommitResult]]:
    """Replay a stored history from round 1 (or from the round after ``previous_hash``)
    the way the coordinator ran it, threading the seed statistics, the loss guard
    and the earlier rounds later rounds read. FedKSeed-Pro and the loss guard
    read every round before, so replay those tasks from round 1. For each stored
    round: the plan plan_round gives for its clients and the commit
    compute_commit gives for its submissions, for the caller to hold against
    what was stored."""
    stats: dict[int, tuple[float, int]] = {}
    history: deque[CommittedRound] = deque(maxlen=history_rounds(spec))
    guard = LossGuard.for_spec(spec)
    for done in stored:
        plan = plan_round(
            spec, done.plan.round, done.plan.attempt, done.plan.slots, stats, done.plan.opened_at, tuple(history), guard
        )
        result = compute_commit(spec, done.plan, done.submissions, previous_hash, tuple(history), guard)
        yield done, plan, result
        if guard:
            guard.record(done.plan.round, result.loss, result.record.entries)
        for seed, (a, n) in result.seed_abs.items():
            old = stats.get(seed, (0.0, 0))
            stats[seed] = (old[0] + a, old[1] + n)
        history.append(done)
        previous_hash = result.record.hash
