"""Fixed-point state: exact replay in any order, revert, overflow, digest, files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import tiny_bert, tiny_gpt2

from seedfed.client.engine.state import INT32_LIMIT, FixedPointState, StateOverflowError, choose_unit_log2
from seedfed.shared import philox
from seedfed.shared.steps import fold

TASK_SEED = 4242


def random_ledger(rng: random.Random, rounds: int, pool: int, per_round: int, max_step: int = 50) -> list[dict[int, int]]:
    out = []
    for _ in range(rounds):
        seeds = rng.sample(range(pool), per_round)
        out.append({s: rng.choice([-1, 1]) * rng.randint(1, max_step) for s in seeds})
    return out


def base_state(model=None, device="cpu") -> FixedPointState:
    model = model or tiny_gpt2()
    return FixedPointState.from_module(model, choose_unit_log2(model), TASK_SEED, device=device)


def test_from_module_rounds_to_the_unit(gpt2):
    unit_log2 = choose_unit_log2(gpt2)
    st = FixedPointState.from_module(gpt2, unit_log2, TASK_SEED)
    assert st.flat.dtype == torch.int32 and st.flat.numel() == st.manifest.total
    for slot, (name, p) in zip(st.manifest.slots, gpt2.named_parameters()):
        assert slot.name == name
        want = torch.round(p.detach().double().reshape(-1) * 2.0**-unit_log2)
        assert torch.equal(st.flat[slot.offset : slot.end].double(), want)


def test_choose_unit_log2_leaves_headroom():
    for scale in (1e-3, 0.02, 1.0, 3.0, 4.0, 1000.0):
        m = torch.nn.Linear(8, 8)
        with torch.no_grad():
            m.weight.fill_(0.01)
            m.weight[0, 0] = scale
        u = choose_unit_log2(m)
        top = int(FixedPointState.from_module(m, u, 1)._true_max())
        assert top <= 2**29
        assert u == -30 or top > 2**28  # not one bit coarser than needed
    assert choose_unit_log2(tiny_gpt2()) >= -30


def test_replay_incremental_folded_and_scratch_agree():
    rng = random.Random(1)
    ledger = random_ledger(rng, rounds=30, pool=16, per_round=3)
    incremental = base_state()
    for r in ledger:
        incremental.apply(r)
    folded = base_state()
    folded.apply_history(ledger, fold=True)
    scratch = base_state()
    scratch.apply_history(ledger, fold=False)
    assert incremental.digest() == folded.digest() == scratch.digest()
    assert incremental.digest() != base_state().digest()
    assert torch.equal(incremental.flat, folded.flat)


def test_random_ledgers_property():
    """Many random ledgers, split at a random point: apply part, fold the rest, compare."""
    model = tiny_bert()
    base = base_state(model)
    for trial in range(8):
        rng = random.Random(100 + trial)
        ledger = random_ledger(
            rng,
            rounds=rng.randint(1, 25),
            pool=rng.choice([4, 64, 2**32]),
            per_round=rng.randint(1, 3),
            max_step=rng.choice([1, 1000, 10**6]),
        )
        cut = rng.randint(0, len(ledger))
        a = base.copy()
        for r in ledger:
            a.apply(r)
        b = base.copy()
        b.apply_history(ledger[:cut], fold=False)
        b.apply_history(ledger[cut:], fold=True)
        c = base.copy()
        c.apply(fold(reversed(ledger)))  # order does not matter either
        assert a.digest() == b.digest() == c.digest(), trial


def test_apply_is_q_times_reference_signs():
    st = base_state()
    w0 = st.flat.clone()
    st.apply({3: 7, 9: -2})
    n = st.flat.numel()
    z3 = torch.tensor(philox.signs(TASK_SEED, 3, 0, n), dtype=torch.int32)
    z9 = torch.tensor(philox.signs(TASK_SEED, 9, 0, n), dtype=torch.int32)
    assert torch.equal(st.flat, w0 + 7 * z3 - 2 * z9)


def test_revert_restores_the_exact_digest():
    st = base_state()
    d0 = st.digest()
    rng = random.Random(3)
    steps = random_ledger(rng, rounds=5, pool=100, per_round=4)
    for s in steps:
        st.apply(s)
    d1 = st.digest()
    st.apply({11: 123456})  # a provisional local step
    st.revert({11: 123456})
    assert st.digest() == d1
    for s in reversed(steps):
        st.revert(s)
    assert st.digest() == d0


def test_zero_steps_and_empty_rounds_change_nothing():
    st = base_state()
    d0 = st.digest()
    st.apply({})
    st.apply({5: 0})
    st.apply_history([{}, {}], fold=True)
    assert st.digest() == d0


def test_overflow_raises_and_leaves_the_state_unchanged():
    st = base_state()
    d0 = st.digest()
    with pytest.raises(StateOverflowError, match="overflow int32"):
        st.apply({1: INT32_LIMIT})
    assert st.digest() == d0
    with pytest.raises(StateOverflowError):
        st.apply({1: 2**40, 2: -(2**40)})
    assert st.digest() == d0


def test_near_the_limit_exact_check_allows_what_fits():
    m = torch.nn.Linear(4, 64, bias=False)
    with torch.no_grad():
        m.weight.zero_()
    st = FixedPointState.from_module(m, -10, 1)
    big = INT32_LIMIT - 5
    st.apply({1: big})  # |W| = big everywhere: fits
    assert int(st.flat.abs().max()) == big
    d = st.digest()
    with pytest.raises(StateOverflowError):
        st.apply({2: 10})  # some element has the sign of its W: leaves int32
    assert st.digest() == d
    st.apply({1: -big})  # opposite direction always fits
    assert int(st.flat.abs().max()) == 0


def test_running_bound_avoids_a_pass_per_apply(monkeypatch):
    st = base_state()
    calls = []
    real = FixedPointState._true_max
    monkeypatch.setattr(FixedPointState, "_true_max", lambda self: calls.append(1) or real(self))
    for i in range(50):
        st.apply({i: 1000})
    assert calls == []


def test_outside_writes_are_noticed_by_the_bound():
    st = base_state()
    other = st.copy()
    other.flat.fill_(INT32_LIMIT - 1)  # e.g. a replica copying another's bytes
    st.flat.copy_(other.flat)
    with pytest.raises(StateOverflowError):
        st.apply({1: 5})


def test_copy_is_independent_and_to_keeps_the_digest():
    st = base_state()
    c = st.copy()
    c.apply({1: 1})
    assert c.digest() != st.digest()
    assert st.to("cpu") is st


def test_digest_covers_manifest_and_bytes():
    a = base_state(tiny_gpt2(0))
    b = base_state(tiny_gpt2(1))
    assert a.digest() != b.digest()
    flat = a.flat.clone()
    flat[-1] += 1
    assert FixedPointState(flat, a.manifest, a.unit_log2, TASK_SEED).digest() != a.digest()
    import hashlib

    want = hashlib.sha256(a.manifest.canonical_bytes() + a.flat.numpy().astype("<i4").tobytes()).hexdigest()
    assert a.digest() == want


def test_save_and_load_round_trip(tmp_path):
    st = base_state()
    st.apply({5: 17})
    path = tmp_path / "state.safetensors"
    st.save(path, {"round": "12", "head": "ab" * 32})
    back, meta = FixedPointState.load(path)
    assert meta == {"round": "12", "head": "ab" * 32}
    assert back.digest() == st.digest()
    assert (back.unit_log2, back.task_seed, back.manifest) == (st.unit_log2, st.task_seed, st.manifest)
    back.apply({6: 1})
    st.apply({6: 1})
    assert back.digest() == st.digest()


def test_load_refuses_corrupt_and_foreign_files(tmp_path):
    st = base_state()
    path = tmp_path / "state.safetensors"
    st.save(path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # flip a bit inside W
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="digest"):
        FixedPointState.load(bad)
    from safetensors.torch import save_file

    save_file({"W": st.flat}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a"):
        FixedPointState.load(tmp_path / "foreign.safetensors")
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(ValueError):
        FixedPointState.load(tmp_path / "junk")


_CHILD = textwrap.dedent(
    """
    import json, sys
    from seedfed.client.engine.state import FixedPointState
    state, _ = FixedPointState.load(sys.argv[1])
    ledger = [{int(k): v for k, v in r.items()} for r in json.loads(sys.argv[2])]
    state.apply_history(ledger, fold=sys.argv[3] == "fold")
    print(state.digest())
    """
)


def test_two_processes_produce_the_same_digest(tmp_path):
    """Separate interpreters (one eager and folded, one compiled and round by round) from the same base file."""
    base = base_state()
    path = tmp_path / "base.safetensors"
    base.save(path)
    ledger = random_ledger(random.Random(5), rounds=12, pool=32, per_round=2)
    arg = json.dumps([{str(k): v for k, v in r.items()} for r in ledger])
    digests = []
    for compile_mode, how in (("0", "fold"), ("1", "rounds")):
        env = dict(os.environ, SEEDFED_COMPILE=compile_mode, PYTHONHASHSEED=compile_mode)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), arg, how], env=env, capture_output=True, text=True, timeout=300, check=True
        )
        digests.append(out.stdout.strip().splitlines()[-1])
    base.apply_history(ledger)
    assert digests[0] == digests[1] == base.digest()


def test_from_module_is_reproducible():
    a = base_state(tiny_gpt2(3))
    b = base_state(tiny_gpt2(3))
    assert a.digest() == b.digest()


def test_refuses_bad_seed_indices():
    st = base_state()
    with pytest.raises(ValueError):
        st.apply({-1: 3})
    with pytest.raises(ValueError):
        st.apply({2**32: 3})
