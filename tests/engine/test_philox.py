"""The tensor generator against the published vectors and the scalar reference."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from seedfed.client.engine import philox
from seedfed.shared import philox as scalar_philox

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "philox4x32_10.json").read_text())


def words_hex(ws) -> list[str]:
    return [f"{int(w):08x}" for w in ws]


def test_random123_known_answers_scalar_reference():
    # Random123 kat_vectors for philox4x32_10, written out literally
    assert scalar_philox.philox4x32((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert scalar_philox.philox4x32((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    assert scalar_philox.philox4x32((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_published_kats_tensor(compiled, request):
    if compiled:
        request.getfixturevalue("compiled_ok")
    for v in VECTORS["philox4x32_10"]:
        c = [int(x, 16) for x in v["counter"]]
        k = [int(x, 16) for x in v["key"]]
        out = philox.philox4x32_tensor(*[torch.tensor([x]) for x in c + k], compiled=compiled)
        assert words_hex(w[0] for w in out) == v["output"]
        assert words_hex(scalar_philox.philox4x32(tuple(c), tuple(k))) == v["output"]


def test_vectors_file_is_what_the_reference_produces():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_vectors", Path(__file__).parents[1] / "vectors" / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build() == VECTORS


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_random_counters_and_keys_match_reference(compiled, request):
    if compiled:
        request.getfixturevalue("compiled_ok")
    rng = random.Random(20241123)
    n = 512
    cols = [[rng.getrandbits(32) for _ in range(n)] for _ in range(6)]
    for j in range(n // 8):  # edge values mixed in
        cols[j % 6][j] = rng.choice([0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF])
    out = philox.philox4x32_tensor(*[torch.tensor(col, dtype=torch.int64) for col in cols], compiled=compiled)
    for i in range(n):
        ref = scalar_philox.philox4x32(tuple(col[i] for col in cols[:4]), (cols[4][i], cols[5][i]))
        assert tuple(int(w[i]) for w in out) == ref, i


def test_outputs_are_uint32_in_int64():
    out = philox.philox4x32_tensor(torch.arange(1000), 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF)
    for w in out:
        assert w.dtype == torch.int64
        assert int(w.min()) >= 0 and int(w.max()) <= 0xFFFFFFFF


@pytest.mark.parametrize("vec", VECTORS["signs"], ids=lambda v: f"t{v['task_seed']}-s{v['seed']}-e{v['first_element']}")
def test_sign_vectors(vec):
    want = [-1 if c == "-" else 1 for c in vec["signs"]]
    assert scalar_philox.signs(vec["task_seed"], vec["seed"], vec["first_element"], len(want)) == want
    z = philox.rademacher(vec["task_seed"], vec["seed"], len(want), first_element=vec["first_element"], compiled=False)
    assert z.dtype == torch.int32
    assert z.tolist() == want


@pytest.mark.parametrize("vec", VECTORS["uniforms"], ids=lambda v: f"t{v['task_seed']}-s{v['seed']}-e{v['first_element']}")
def test_uniform_vectors(vec):
    want = [int(w, 16) / 2**32 for w in vec["words"]]
    t, s, e = vec["task_seed"], vec["seed"], vec["first_element"]
    assert [scalar_philox.element_uniform(t, s, e + j) for j in range(len(want))] == want
    u = philox.uniforms(t, s, len(want), first_element=e, compiled=False)
    assert u.dtype == torch.float64
    assert u.tolist() == want
    assert all(0.0 <= x < 1.0 for x in want)


def test_sign_words_layout_matches_block_signs():
    words = philox.sign_words(5, 9, 3, 2)
    assert words.shape == (2, 4)
    for b in range(2):
        bits = [-1 if (int(words[b, j // 32]) >> (j % 32)) & 1 else 1 for j in range(128)]
        assert bits == scalar_philox.block_signs(5, 9, 3 + b)


def test_rademacher_any_window_matches_reference():
    rng = random.Random(7)
    for _ in range(20):
        first = rng.randrange(0, 10_000)
        n = rng.randrange(1, 700)
        assert philox.rademacher(11, 22, n, first_element=first).tolist() == scalar_philox.signs(11, 22, first, n)


def test_signs_are_balanced_and_seeds_independent():
    a = philox.rademacher(1, 1, 200_000).to(torch.float64)
    b = philox.rademacher(1, 2, 200_000).to(torch.float64)
    assert abs(float(a.mean())) < 0.01
    assert abs(float((a * b).mean())) < 0.01


def test_compiled_and_eager_generators_agree(compiled_ok):
    for first, n in [(0, 1), (3, 1000), (2**32 - 2, 5000)]:  # the last crosses the 32-bit block boundary
        e = philox.sign_words(77, 88, first, n, compiled=False)
        c = philox.sign_words(77, 88, first, n, compiled=True)
        assert torch.equal(e, c)
    assert torch.equal(
        philox.uniforms(3, 4, 999, first_element=5, compiled=False), philox.uniforms(3, 4, 999, first_element=5, compiled=True)
    )


@pytest.mark.parametrize("total", [1, 127, 128, 129, 70_001])
def test_compiled_and_eager_kernels_agree(compiled_ok, total):
    base = torch.randint(-1000, 1000, (total,), dtype=torch.int32, generator=torch.Generator().manual_seed(total))
    e, c = base.clone(), base.clone()
    philox.add_signs_(e, 5, 6, -321, compiled=False)
    philox.add_signs_(c, 5, 6, -321, compiled=True)
    assert torch.equal(e, c)
    assert torch.equal(e, base - 321 * philox.rademacher(5, 6, total))
    for dtype in (torch.float32, torch.bfloat16):
        oe = torch.empty(total, dtype=dtype)
        oc = torch.empty(total, dtype=dtype)
        philox.write_perturbed_(oe, base, 2.0**-12, 5, 6, 1e-3, compiled=False)
        philox.write_perturbed_(oc, base, 2.0**-12, 5, 6, 1e-3, compiled=True)
        assert torch.equal(
            oe.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            oc.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        )


def test_chunked_apply_spans_chunk_boundaries(monkeypatch):
    total = 3 * 128 * 4 + 77
    base = torch.zeros(total, dtype=torch.int32)
    monkeypatch.setattr(philox, "EAGER_CHUNK_BLOCKS", 4)  # many chunks and a part-block at the end
    philox.add_signs_(base, 9, 10, 3, compiled=False)
    assert base.tolist() == [3 * z for z in scalar_philox.signs(9, 10, 0, total)]


def test_compile_mode_from_environment(monkeypatch):
    monkeypatch.setattr(philox, "_compile_broken", False)  # whatever an earlier test left
    monkeypatch.setenv("SEEDFED_COMPILE", "0")
    assert not philox.compile_wanted(10**9)
    monkeypatch.setenv("SEEDFED_COMPILE", "1")
    assert philox.compile_wanted(10)
    monkeypatch.delenv("SEEDFED_COMPILE")
    assert not philox.compile_wanted(philox.COMPILE_MIN_ELEMENTS - 1)
    assert philox.compile_wanted(philox.COMPILE_MIN_ELEMENTS)
    # after a failed compile everything stays eager, whatever the environment asks
    monkeypatch.setattr(philox, "_compile_broken", True)
    monkeypatch.setenv("SEEDFED_COMPILE", "1")
    assert not philox.compile_wanted(10**9)


def test_failed_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kw):
        def call(*a):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(philox, "_compiled", {})
    monkeypatch.setattr(philox, "_compile_broken", False)
    monkeypatch.setattr(torch, "compile", broken)
    flat = torch.zeros(300, dtype=torch.int32)
    with pytest.warns(RuntimeWarning, match="eager"):
        philox.add_signs_(flat, 1, 2, 4, compiled=True)
    assert flat.tolist() == [4 * z for z in scalar_philox.signs(1, 2, 0, 300)]
    assert philox._compile_broken


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_perturbed_slice_at_any_offset_matches_the_full_pass(compiled, request, monkeypatch):
    """A slice derived on its own (as streamed weights derive one tensor) takes the signs its
    elements have in the whole flat index, whatever block it starts and ends in."""
    if compiled:
        request.getfixturevalue("compiled_ok")
        # two dtypes and slices of 1-2 elements take more graphs than the default recompile limit (8)
        # allows; past it the kernels fall back to eager and the compiled case would test nothing
        monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 64)
    monkeypatch.setattr(philox, "EAGER_CHUNK_BLOCKS", 3)  # several chunks inside one slice
    total = 5 * 128 * 3 + 45
    flat = torch.randint(-5000, 5000, (total,), dtype=torch.int32, generator=torch.Generator().manual_seed(3))
    for dtype in (torch.float32, torch.bfloat16):
        full = torch.empty(total, dtype=dtype)
        philox.write_perturbed_(full, flat, 2.0**-14, 11, 12, -3e-3, compiled=compiled)
        for first, n in [
            (0, 1),
            (1, 127),
            (5, 300),
            (127, 2),
            (128, 128),
            (200, 1000),
            (640, 1280),
            (total - 45, 45),
            (17, total - 17),
        ]:
            part = torch.full((n,), float("nan"), dtype=dtype)
            philox.write_perturbed_(
                part, flat[first : first + n], 2.0**-14, 11, 12, -3e-3, first_element=first, compiled=compiled
            )
            bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
            assert torch.equal(part.view(bits), full[first : first + n].view(bits)), (dtype, first, n)
    assert not philox._compile_broken
    with pytest.raises(ValueError):
        philox.write_perturbed_(torch.empty(3), flat[:3], 1.0, 1, 2, 0.5, first_element=-1)


def test_add_signs_on_a_slice_matches_the_whole_pass(monkeypatch):
    """A step over part of the flat index (a trainable scope) moves each element as the full pass does."""
    monkeypatch.setattr(philox, "EAGER_CHUNK_BLOCKS", 3)
    total = 5 * 128 * 3 + 45
    base = torch.randint(-5000, 5000, (total,), dtype=torch.int32, generator=torch.Generator().manual_seed(4))
    full = base.clone()
    philox.add_signs_(full, 11, 12, -7, compiled=False)
    for first, n in [(0, 1), (1, 127), (5, 300), (127, 2), (128, 128), (200, 1000), (total - 45, 45), (17, total - 17)]:
        part = base.clone()
        philox.add_signs_(part[first : first + n], 11, 12, -7, first_element=first, compiled=False)
        assert torch.equal(part[first : first + n], full[first : first + n]), (first, n)
        assert torch.equal(part[:first], base[:first]) and torch.equal(part[first + n :], base[first + n :])
    with pytest.raises(ValueError):
        philox.add_signs_(base[:3], 1, 2, 1, first_element=-1)
