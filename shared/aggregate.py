"""Aggregation of the scalars that several clients report for the same seeds.

mean, median and trimmed mean work seed by seed. They keep a minority's value
inside the range of the honest reports, but zeroth-order reports are mostly
minibatch noise (honest clients disagree in sign on most seeds), so the
honest range is wide and a minority at one end of it still pulls every step.

screened_mean works on a round as a whole and on its history. A report's
deviation is its distance from its seed's median in units of the round's
typical distance (the median of all distances). A client whose median
deviation over its recent reports exceeds a threshold is left out; the
others' reports, clipped to the median plus or minus a few typical
distances, are averaged. A client that is extreme on most seeds (a constant
+127, a sign-flipped report at full strength) is left out, and one that is
extreme now and then moves a step by at most the clip.

Under weighting "examples" (FedAvg's) mean and screened_mean weigh each
report by the training examples its client says it holds. With clients whose
data differ (one holds mostly one label) an equal mean minimises the mean of
their losses, which can favour one label over the data as a whole; weighting
by examples minimises the loss over all their data, as a centralised run
would. A claim counts at most WEIGHT_CAP times the median claim of the
reports on its seeds, so a client that lies about its size buys a bounded
share.
"""

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


WEIGHT_CAP = 4.0


def example_weights(claims: Sequence[int]) -> list[float]:
    """Each report's weight from its client's claimed example count: the claim, at
    most WEIGHT_CAP times the median positive claim; a missing claim (0) weighs
    as the median."""
    positive = [c for c in claims if c > 0]
    if not positive:
        return [1.0] * len(claims)
    median = float(statistics.median(positive))
    return [min(float(c), WEIGHT_CAP * median) if c > 0 else median for c in claims]


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    if not values:
        raise ValueError("nothing to aggregate")
    return math.fsum(w * x for w, x in zip(weights, values)) / math.fsum(weights)


def _centre_and_spread(rows: Sequence[Sequence[float]], floor: float) -> tuple[list[float], float]:
    """Each seed's median, and the median distance of all reports from their
    seed's median (at least ``floor``: reports closer than that are one value)."""
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("every client must report the same number of seeds")
    centre = [float(statistics.median(column)) for column in zip(*rows)]
    distances = [abs(x - c) for r in rows for x, c in zip(r, centre)]
    return centre, max(float(statistics.median(distances)) if distances else 0.0, floor)


def deviations(rows: Sequence[Sequence[float]], floor: float) -> list[list[float]]:
    """Every report's distance from its seed's median, in typical distances."""
    centre, spread = _centre_and_spread(rows, floor)
    return [[abs(x - c) / spread for x, c in zip(r, centre)] for r in rows]


def outlying(scores: Sequence[float], threshold: float) -> bool:
    """A client is outlying when its median deviation exceeds ``threshold``."""
    return bool(scores) and statistics.median(scores) > threshold


def clipped_mean(
    rows: Sequence[Sequence[float]], clip: float, floor: float, weights: Sequence[float] | None = None
) -> list[float]:
    """Per seed, the mean of the reports clipped to median +- ``clip`` typical distances
    (weighted by ``weights``, one per row, when given)."""
    centre, spread = _centre_and_spread(rows, floor)
    bound = clip * spread
    clipped = [[min(max(x, c - bound), c + bound) for x in column] for column, c in zip(zip(*rows), centre)]
    if weights is None:
        return [math.fsum(column) / len(rows) for column in clipped]
    return [weighted_mean(column, weights) for column in clipped]
