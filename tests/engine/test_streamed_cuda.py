"""Streamed weights and a host master on a GPU: the digests of a CPU, a device-master and a
host-master replica agree, and every layout gives the same probes (runs only where a CUDA
device is visible)."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_gpt2
from model_files import empty_twin, save, tiny_llama

from seedfed.client.engine.loading import stream_state
from seedfed.client.engine.memory import plan_layout
from seedfed.client.engine.probe import probe
from seedfed.client.engine.safetensors_io import CheckpointFiles
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2
from seedfed.client.engine.streamed import StreamedWeights
from seedfed.client.engine.weights import bind_weights

pytestmark = pytest.mark.cuda
BATCH = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(4))


def ledger(n_rounds=30):
    rng = random.Random(11)
    return [{s: rng.choice([-1, 1]) * rng.randint(1, 10**5) for s in rng.sample(range(64), 3)} for _ in range(n_rounds)]


def lm_loss(model):
    def loss():
        with torch.inference_mode():
            ids = BATCH.cuda()
            return model(ids, labels=ids).loss

    return loss


def test_streamed_load_into_device_and_pinned_host_masters(tmp_path):
    directory = save(tiny_llama(), tmp_path / "m", torch.bfloat16, shard_size="30KB")
    files = CheckpointFiles.find(directory)
    cpu = stream_state(empty_twin(directory), files, 3)
    device = stream_state(empty_twin(directory), files, 3, device="cuda")
    host = stream_state(empty_twin(directory), files, 3, pin_memory=True)
    assert device.device.type == "cuda" and host.flat.is_pinned()
    assert cpu.digest() == device.digest() == host.digest()
    hist = ledger()
    cpu.apply_history(hist, fold=False)
    device.apply_history(hist)
    host.apply_history(hist)
    assert cpu.digest() == device.digest() == host.digest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_layout_gives_the_same_probes_on_cuda(dtype):
    models = [tiny_gpt2() for _ in range(4)]
    unit = choose_unit_log2(models[0])
    host_state = FixedPointState.from_module(models[0], unit, 9)
    host_state = FixedPointState(host_state.flat.pin_memory(), host_state.manifest, unit, 9)
    device_state = host_state.to("cuda")
    resident = ComputeWeights.bind(models[0], device_state.copy(), dtype)
    streamed = StreamedWeights.bind(models[1], device_state.copy(), dtype)
    host = StreamedWeights.bind(models[2], host_state.copy(), dtype, "cuda", dual=False)
    host_dual = StreamedWeights.bind(models[3], host_state.copy(), dtype, "cuda")
    assert host.staged and host_dual.staged and host_dual.dual and not streamed.staged
    everyone = [resident, streamed, host, host_dual]
    for seed in range(5):
        results = {probe(w, seed, 1e-3, lm_loss(w.module)) for w in everyone}
        assert len(results) == 1, results
    hist = ledger(5)
    for w in everyone:
        w.state.apply_history(hist)
        w.refresh()
    assert len({w.state.digest() for w in everyone}) == 1
    assert len({float(lm_loss(w.module)()) for w in everyone}) == 1
    assert all(p.is_meta for p in models[3].parameters())


def test_host_master_keeps_the_device_at_a_few_blocks():
    """A model whose float weights would fill a good part of the device memory used here runs
    with the master in host memory: peak device memory stays near one block's scratch."""
    from seedfed.client.simulate.tinymodel import tiny_module

    model = tiny_module("llama", vocab_size=4096, hidden=1024, layers=16, heads=8, positions=128)
    state = FixedPointState.from_module(model, choose_unit_log2(model), 1)
    state = FixedPointState(state.flat.pin_memory(), state.manifest, state.unit_log2, 1)
    weights = bind_weights(model, state, plan_layout(state.manifest.total, "cuda", torch.bfloat16, master="host"))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, 4096, (2, 64), device="cuda")
    probe(weights, 1, 1e-3, lambda: model(ids, labels=ids).loss)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    full_bf16 = 2 * state.manifest.total
    assert peak < 0.5 * full_bf16, (peak, full_bf16)
