"""Scalars on the wire: one signed byte each (the "Just One Byte" codec).

A projected gradient g is sent as b = stochastic_round(g / scale) clipped to
[-127, 127]; the receiver reads b * scale. Stochastic rounding keeps the
decoded value unbiased inside the clip range. -128 is never produced, so the
byte range is symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

BYTE_MAX = 127


class ScalarError(ValueError):
    """A scalar that cannot be encoded (NaN or infinite)."""


def encode_scalar(value: float, scale: float, uniform: float) -> int:
    """``uniform`` in [0, 1) decides the rounding; pass a deterministic draw."""
    if not math.isfinite(value):
        raise ScalarError(f"scalar {value!r} is not finite")
    scaled = value / scale
    if scaled >= BYTE_MAX:
        return BYTE_MAX
    if scaled <= -BYTE_MAX:
        return -BYTE_MAX
    return math.floor(scaled + uniform)


def encode_scalars(values: Sequence[float], scale: float, uniforms: Sequence[float]) -> bytes:
    if len(values) != len(uniforms):
        raise ValueError("one uniform per scalar is needed")
    return bytes((encode_scalar(v, scale, u) & 0xFF) for v, u in zip(values, uniforms))


def decode_scalars(packed: bytes, scale: float) -> list[float]:
    return [(b - 256 if b > 127 else b) * scale for b in packed]


def decode_bytes(packed: bytes) -> list[int]:
    return [b - 256 if b > 127 else b for b in packed]
