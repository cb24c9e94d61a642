"""Regenerate philox4x32_10.json from the scalar reference (seedfed.shared.philox).

    python tests/vectors/make_vectors.py

The file is published: other implementations of the seedfed generator check
themselves against it. Changing its contents changes every model replica.
"""

from __future__ import annotations

import json
from pathlib import Path

from seedfed.shared.philox import GENERATOR_ID, element_uniform, philox4x32, signs

OUT = Path(__file__).with_name("philox4x32_10.json")

# Random123's known-answer vectors for Philox4x32-10 (kat_vectors).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)),
]
# (task_seed, seed, first flat element): block starts, mid-block, high blocks, extreme keys
TRIPLES = [
    (0, 0, 0),
    (1, 2, 0),
    (12345, 7, 1000),
    (0xFFFFFFFF, 0xFFFFFFFF, 127),
    (42, 4095, 2**32 * 128 + 5),
    (2024, 1, 124_439_800),
]
N_SIGNS = 160  # crosses a block boundary
N_UNIFORMS = 9


def hx(v: int) -> str:
    return f"{v:08x}"


def build() -> dict:
    return {
        "generator": GENERATOR_ID,
        "layout": {
            "key": "(task_seed, seed)",
            "counter": "(block & 0xffffffff, block >> 32, stream, 0)",
            "signs": "stream 0; element i: bit i % 32 of word (i % 128) // 32 of block i // 128; set bit = -1",
            "uniforms": "stream 1; element i: word i % 4 of block i // 4, divided by 2**32",
        },
        "philox4x32_10": [
            {"counter": [hx(c) for c in ctr], "key": [hx(k) for k in key], "output": [hx(w) for w in philox4x32(ctr, key)]}
            for ctr, key in KAT
        ],
        "signs": [
            {
                "task_seed": t,
                "seed": s,
                "first_element": e,
                "signs": "".join("-" if z < 0 else "+" for z in signs(t, s, e, N_SIGNS)),
            }
            for t, s, e in TRIPLES
        ],
        "uniforms": [
            {
                "task_seed": t,
                "seed": s,
                "first_element": e,
                "words": [hx(round(element_uniform(t, s, e + j) * 2**32)) for j in range(N_UNIFORMS)],
            }
            for t, s, e in TRIPLES
        ],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
