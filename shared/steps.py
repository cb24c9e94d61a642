"""From aggregated scalars to the integer steps a committed round carries.

A step moves the fixed-point weights by q * z. The real-valued step
-lr * g / unit is rounded stochastically with a uniform keyed by
(task seed, seed index, round), so every coordinator restart rounds the same
way and the rounding is unbiased even for steps smaller than one unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from seedfed.shared.philox import STREAM_STEP_ROUNDING, draw_uniform

MAX_STEP = 2**30  # a single step larger than this is a configuration error, not a signal


class StepError(ValueError):
    pass


def round_step(real_units: float, task_seed: int, seed: int, round_no: int) -> int:
    if not math.isfinite(real_units):
        raise StepError(f"step {real_units!r} is not finite")
    u = draw_uniform((task_seed, seed), round_no, 0, STREAM_STEP_ROUNDING)
    q = math.floor(real_units + u)
    if abs(q) > MAX_STEP:
        raise StepError(f"step of {q} units exceeds {MAX_STEP}; lower lr or raise unit_log2")
    return q


def integer_steps(
    contributions: Iterable[tuple[int, float]],
    *,
    lr: float,
    unit: float,
    task_seed: int,
    round_no: int,
) -> dict[int, int]:
    """``contributions``: (seed, aggregated scalar already divided by the number
    of groups). Contributions to the same seed add up before rounding. Returns
    the canonical {seed: q} with zero steps dropped."""
    per_seed: dict[int, float] = {}
    for seed, g in contributions:
        per_seed[seed] = per_seed.get(seed, 0.0) + g
    out: dict[int, int] = {}
    for seed in sorted(per_seed):
        q = round_step(-lr * per_seed[seed] / unit, task_seed, seed, round_no)
        if q:
            out[seed] = q
    return out


def fold(rounds: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Sum a history of rounds per seed: the same weights with at most K replays."""
    total: dict[int, int] = {}
    for entries in rounds:
        for seed, q in entries.items():
            total[seed] = total.get(seed, 0) + q
    return {s: q for s, q in sorted(total.items()) if q}
