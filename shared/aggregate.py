"""Aggregation of the scalars that several clients report for one seed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def aggregate(values: Sequence[float], rule: str, trim_fraction: float = 0.2) -> float:
    """mean, median, or trimmed mean (``trim_fraction`` cut from each end)."""
    if not values:
        raise ValueError("nothing to aggregate")
    if rule == "mean":
        return math.fsum(values) / len(values)
    if rule == "median":
        return float(statistics.median(values))
    if rule == "trimmed_mean":
        ordered = sorted(values)
        cut = int(len(ordered) * trim_fraction)
        kept = ordered[cut : len(ordered) - cut] or ordered
        return math.fsum(kept) / len(kept)
    raise ValueError(f"unknown aggregation rule {rule!r}")
