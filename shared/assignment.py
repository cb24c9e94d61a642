"""Which seeds a round asks for: deterministic from (task seed, round, group, step).

Clients of one group probe the same seeds, so per-seed robust aggregation
(median, trimmed mean) has several reports to work with; separate groups
explore separate directions.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from seedfed.shared.philox import STREAM_ASSIGNMENT, draw_word


def group_of(slot: int, group_size: int) -> int:
    return 0 if group_size <= 0 else slot // group_size


def uniform_seeds(task_seed: int, round_no: int, group: int, count: int, pool_size: int) -> list[int]:
    key = (task_seed, round_no)
    words = [draw_word(key, group, j, STREAM_ASSIGNMENT) for j in range(count)]
    if pool_size <= 0:
        return words
    return [(w * pool_size) >> 32 for w in words]  # multiply-shift: no modulo bias to speak of


def pro_probabilities(mean_abs_scalar: Sequence[float | None]) -> list[float]:
    """FedKSeed-Pro: per seed the mean absolute scalar of its history,
    min-max normalised, softmax. Seeds never probed count as the mean of the rest."""
    known = [v for v in mean_abs_scalar if v is not None]
    if not known:
        return [1.0 / len(mean_abs_scalar)] * len(mean_abs_scalar)
    fill = sum(known) / len(known)
    vals = [fill if v is None else v for v in mean_abs_scalar]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    norm = [0.0 if span == 0 else (v - lo) / span for v in vals]
    exps = [math.exp(v) for v in norm]
    total = math.fsum(exps)
    return [e / total for e in exps]


def weighted_seeds(task_seed: int, round_no: int, group: int, count: int, probabilities: Sequence[float]) -> list[int]:
    cdf: list[float] = []
    acc = 0.0
    for p in probabilities:
        acc += p
        cdf.append(acc)
    key = (task_seed, round_no)
    out = []
    for j in range(count):
        u = draw_word(key, group, j, STREAM_ASSIGNMENT) / 4294967296.0 * acc
        out.append(min(bisect.bisect_right(cdf, u), len(cdf) - 1))
    return out
