"""Philox4x32-10 in plain Python integers.

This is the scalar reference for the tensor generator in ``philox.py`` and
the generator the coordinator uses for its own few draws (seed assignment,
stochastic rounding of steps). It needs no torch, so the coordinator image
stays small. Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"
(SC'11); constants as in Random123 and cuRAND.
"""

from __future__ import annotations

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
ROUNDS = 10

# Sub-streams: the third counter word separates independent uses of one key,
# so a sign never shares bits with a uniform drawn for something else.
STREAM_SIGNS = 0
STREAM_ELEMENT_UNIFORM = 1
STREAM_STEP_ROUNDING = 2
STREAM_SCALAR_ROUNDING = 3
STREAM_ASSIGNMENT = 4

GENERATOR_ID = "philox4x32-10/rademacher/v1"


def philox4x32(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """One Philox4x32-10 block: 128-bit counter, 64-bit key -> four 32-bit words."""
    c0, c1, c2, c3 = (c & MASK32 for c in counter)
    k0, k1 = (k & MASK32 for k in key)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & MASK32,
            p1 & MASK32,
            ((p0 >> 32) ^ c3 ^ k1) & MASK32,
            p0 & MASK32,
        )
    return c0, c1, c2, c3


def uniform01(word: int) -> float:
    """Map a 32-bit word to [0, 1) exactly (k / 2**32 is representable in a double)."""
    return (word & MASK32) / 4294967296.0


def block_signs(task_seed: int, seed: int, block: int) -> list[int]:
    """The 128 Rademacher signs of one element block: element j of the block is
    bit (j % 32) of word (j // 32); a set bit means -1."""
    words = philox4x32((block & MASK32, block >> 32, STREAM_SIGNS, 0), (task_seed, seed))
    return [-1 if (words[j // 32] >> (j % 32)) & 1 else 1 for j in range(128)]


def signs(task_seed: int, seed: int, first_element: int, count: int) -> list[int]:
    """Signs of flat elements [first_element, first_element + count)."""
    out: list[int] = []
    block = first_element // 128
    skip = first_element % 128
    while len(out) < count:
        out.extend(block_signs(task_seed, seed, block)[skip:])
        skip = 0
        block += 1
    return out[:count]


def element_uniform(task_seed: int, seed: int, element: int) -> float:
    """The per-element uniform of flat element ``element``: word element % 4 of
    block element // 4 of stream STREAM_ELEMENT_UNIFORM, / 2**32 (the scalar
    reference of ``philox.uniforms``)."""
    block = element // 4
    words = philox4x32((block & MASK32, block >> 32, STREAM_ELEMENT_UNIFORM, 0), (task_seed, seed))
    return uniform01(words[element % 4])


def draw_uniform(key: tuple[int, int], a: int, b: int, stream: int) -> float:
    """A single uniform in [0, 1) for small-count draws (coordinator side)."""
    return uniform01(philox4x32((a, b, stream, 0), key)[0])


def draw_word(key: tuple[int, int], a: int, b: int, stream: int) -> int:
    return philox4x32((a, b, stream, 0), key)[0]
