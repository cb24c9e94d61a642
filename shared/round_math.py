"""The pure arithmetic of a round: who probes which seeds, and what a round
commits. No I/O, no clocks: the same inputs give the same plan and the same
record after any restart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from seedfed.shared.aggregate import aggregate
from seedfed.shared.assignment import pro_probabilities, uniform_seeds, weighted_seeds
from seedfed.shared.ledger import RoundRecord, make_record
from seedfed.shared.quantize import decode_bytes
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


@dataclass(frozen=True)
class CommitResult:
    """Everything a commit writes, computed from the attempt's submissions (compute_commit)."""

    record: RoundRecord
    seed_abs: dict[int, tuple[float, int]]  # seed -> (sum of |aggregate|, count) to add to the stats
    submissions_counted: int
    mean_loss: float | None


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
) -> RoundPlan:
    """Slots in the given (stable) order; each group's seeds from (task seed, round, group)."""
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
        lr=spec.lr_at(round_no),
        group_size=spec.group_size,
        group_seeds=tuple(tuple(g) for g in groups),
        slots=tuple(client_ids),
    )


def compute_commit(spec: TaskSpec, plan: RoundPlan, submissions: Sequence[Submission], previous_hash: bytes) -> CommitResult:
    """Per group and step: aggregate the decoded scalars with the task's rule;
    divide by the number of groups that reported; integer steps by the lr
    schedule with keyed stochastic rounding; chain the hash."""
    by_group: dict[int, list[list[int]]] = {}
    for sub in sorted(submissions, key=lambda s: s.slot):
        by_group.setdefault(plan.group_of_slot(sub.slot), []).append(decode_bytes(sub.scalars))
    n_reporting = len(by_group)
    contributions: list[tuple[int, float]] = []
    seed_abs: dict[int, tuple[float, int]] = {}
    for group in sorted(by_group):
        rows = by_group[group]
        for j, seed in enumerate(plan.group_seeds[group]):
            agg = aggregate([row[j] * spec.scalar_scale for row in rows], spec.aggregation, spec.trim_fraction)
            contributions.append((seed, agg / n_reporting))
            a, n = seed_abs.get(seed, (0.0, 0))
            seed_abs[seed] = (a + abs(agg), n + 1)
    entries = integer_steps(contributions, lr=plan.lr, unit=spec.unit, task_seed=spec.task_seed, round_no=plan.round)
    losses = [s.loss for s in submissions if s.loss is not None and math.isfinite(s.loss)]
    mean_loss = math.fsum(losses) / len(losses) if losses else None
    return CommitResult(make_record(previous_hash, plan.round, entries), seed_abs, len(submissions), mean_loss)
