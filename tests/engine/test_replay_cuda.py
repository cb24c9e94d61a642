"""CPU and CUDA replicas hold the same bytes (runs only where a CUDA device is visible)."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_gpt2

from seedfed.client.engine.probe import probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2

pytestmark = pytest.mark.cuda


def ledger(n_rounds=40):
    rng = random.Random(9)
    return [{s: rng.choice([-1, 1]) * rng.randint(1, 10**5) for s in rng.sample(range(64), 3)} for _ in range(n_rounds)]


@pytest.mark.parametrize("compile_mode", ["0", "1"], ids=["eager", "compiled"])
def test_cpu_and_cuda_replays_give_identical_digests(monkeypatch, compile_mode):
    monkeypatch.setenv("SEEDFED_COMPILE", compile_mode)
    model = tiny_gpt2()
    unit = choose_unit_log2(model)
    cpu = FixedPointState.from_module(model, unit, 7, device="cpu")
    gpu = FixedPointState.from_module(model, unit, 7, device="cuda")
    assert cpu.digest() == gpu.digest()
    hist = ledger()
    cpu.apply_history(hist, fold=False)
    gpu.apply_history(hist, fold=True)
    assert gpu.device.type == "cuda"
    assert cpu.digest() == gpu.digest()
    assert torch.equal(cpu.flat, gpu.flat.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_and_cuda_compute_weights_are_bitwise_equal(dtype):
    model_c, model_g = tiny_gpt2(), tiny_gpt2()
    unit = choose_unit_log2(model_c)
    sc = FixedPointState.from_module(model_c, unit, 7)
    sg = sc.to("cuda")
    wc = ComputeWeights.bind(model_c, sc, dtype)
    wg = ComputeWeights.bind(model_g, sg, dtype)
    assert torch.equal(wc.buffer, wg.buffer.cpu())
    wc.perturb(3, 1e-3)
    wg.perturb(3, 1e-3)
    assert torch.equal(wc.buffer, wg.buffer.cpu())
    ids = torch.randint(0, 96, (2, 8))
    d = sg.digest()
    probe(wg, 5, 1e-3, lambda: model_g(ids.cuda(), labels=ids.cuda()).loss)
    assert sg.digest() == d == sc.digest()


def test_large_state_crosses_chunks_identically():
    """A state larger than one compiled chunk, with a part-block tail."""
    from seedfed.client.engine import philox

    n = philox.COMPILED_CHUNK_BLOCKS * 128 + 12345
    base = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    c, g = base.clone(), base.cuda()
    for seed, q in [(1, 3), (2, -70000), (3, 1)]:
        philox.add_signs_(c, 11, seed, q)
        philox.add_signs_(g, 11, seed, q)
    assert torch.equal(c, g.cpu())
