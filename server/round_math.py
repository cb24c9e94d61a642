"""The pure arithmetic of a round: who probes which seeds, and what a round
commits. No I/O, no clocks: the same inputs give the same plan and the same
record after any restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from seedfed.server.store import CommitResult, RoundPlan, Submission
from seedfed.shared.aggregate import aggregate
from seedfed.shared.assignment import pro_probabilities, uniform_seeds, weighted_seeds
from seedfed.shared.ledger import make_record
from seedfed.shared.quantize import decode_bytes
from seedfed.shared.steps import integer_steps
from seedfed.shared.taskspec import TaskSpec


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
