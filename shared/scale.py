"""The one-byte scale of each round.

A byte b carries the scalar b * scale. With a fixed scale, zeroth-order
scalars (mostly minibatch noise, with a spread nobody knows before the run)
either saturate at +-127, which clips much of the signal and hides an
attacker who always sends +-127 among honest clients who often do, or use few
levels. The adaptive rule sets each round's scale from the bytes of the
rounds before, so that their median magnitude sits near a target (8 of 127
by default): honest bytes stay clear of saturation and +-127 stands out.

Every scale is the genesis scale times a whole number of quarter octaves,
2 ** (q / 4). The next q comes from the median magnitude of the last
SCALE_ROUNDS rounds' bytes, each byte valued at its own round's scale, and
every comparison on the way is between integers: every coordinator computes
the same scale from the same stored submissions, on any platform. Each
round's scale is announced in its RoundOpen and stored with the attempt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from seedfed.shared.quantize import decode_bytes

_QUARTER_OCTAVES = (1.0, 1.189207115002721, 1.4142135623730951, 1.681792830507429)  # 2 ** (k / 4), k = 0..3
SCALE_ROUNDS = 5  # rounds whose bytes set the next scale: a median of one round's few bytes is noisy
MAX_QUARTERS = 64  # the scale stays within 2**-16 .. 2**16 of the genesis scale
STEP_QUARTERS = 16  # the most a scale moves in a round (four octaves: from a bad genesis scale in a round or two)
DEAD_QUARTERS = 1  # a quarter octave off target is close enough: the scale does not flutter


def scale_at(genesis_scale: float, quarters: int) -> float:
    """genesis_scale * 2 ** (quarters / 4), the same bits everywhere (a table and an exact ldexp)."""
    return math.ldexp(genesis_scale * _QUARTER_OCTAVES[quarters % 4], quarters // 4)


def quarters_of(genesis_scale: float, scale: float) -> int:
    """The inverse of scale_at for a scale it produced."""
    return round(4 * math.log2(scale / genesis_scale))


def quarters_off(magnitude: int, target: int) -> int:
    """round(4 * log2(magnitude / target)) for a byte magnitude 1..127, in integers:
    the k with 2**(2k-1) <= (m/t)**8 < 2**(2k+1)."""
    m8, t8 = magnitude**8, target**8
    k = -32  # below any ratio of a byte (>= 1) to a target (<= 100)
    while _at_least(m8, t8, 2 * (k + 1) - 1):
        k += 1
    return k


def _at_least(m8: int, t8: int, e: int) -> bool:
    """m8 >= t8 * 2**e, for a signed e."""
    return m8 >= t8 << e if e >= 0 else m8 << -e >= t8


def median_magnitude(rounds: Sequence[tuple[int, Iterable[bytes]]]) -> tuple[int, int] | None:
    """The lower median of |x| over every byte of ``rounds`` (each a quarter
    exponent and that round's payloads), as (|byte|, quarters): |x| is
    |byte| * 2 ** (quarters / 4) genesis scales. None when there are no bytes.
    Sorted by |byte| ** 4 * 2 ** quarters, an exact integer key."""
    mags = [(abs(b), q) for q, payloads in rounds for p in payloads for b in decode_bytes(p)]
    if not mags:
        return None
    low = min(q for _, q in mags)
    mags.sort(key=lambda bq: bq[0] ** 4 << (bq[1] - low))
    return mags[(len(mags) - 1) // 2]


def next_scale(genesis_scale: float, target: int, rounds: Sequence[tuple[float, Iterable[bytes]]]) -> float:
    """The scale of the round after ``rounds`` (oldest first: each its scale
    and its payloads; the last SCALE_ROUNDS count)."""
    if not rounds:
        return genesis_scale
    recent = [(quarters_of(genesis_scale, s), p) for s, p in rounds[-SCALE_ROUNDS:]]
    current = recent[-1][0]
    median = median_magnitude(recent)
    if median is None:
        return scale_at(genesis_scale, current)
    magnitude, q = median
    # a median byte of 0 says only "too coarse": step down as far as allowed
    wanted = q + quarters_off(magnitude, target) if magnitude else current - STEP_QUARTERS
    move = max(-STEP_QUARTERS, min(STEP_QUARTERS, wanted - current))
    if abs(move) <= DEAD_QUARTERS:
        move = 0
    return scale_at(genesis_scale, max(-MAX_QUARTERS, min(MAX_QUARTERS, current + move)))
