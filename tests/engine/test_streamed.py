"""Streamed compute weights: the same losses, probes and digests as resident weights, bit for bit."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from helpers import tiny_bert, tiny_gpt2
from model_files import tiny_llama

from seedfed.client.engine.probe import probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2
from seedfed.client.engine.streamed import StreamedWeights

TASK_SEED = 5
BATCH = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
MAKERS = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama, "llama-tied": lambda: tiny_llama(tied=True)}


def loss_of(model):
    def loss():
        with torch.inference_mode():
            out = model(BATCH)
            logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
            return (
                logits.float().pow(2).mean()
                if not hasattr(out, "logits")
                else torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), BATCH[:, 1:].flatten())
            )

    return loss


def pair(arch, dtype, **streamed_kw):
    """A resident and a streamed binding of the same base, each over its own copy of the master."""
    resident_model, streamed_model = MAKERS[arch](), MAKERS[arch]()
    state = FixedPointState.from_module(resident_model, choose_unit_log2(resident_model), TASK_SEED)
    other = state.copy()
    resident = ComputeWeights.bind(resident_model, state, dtype)
    streamed = StreamedWeights.bind(streamed_model, other, dtype, **streamed_kw)
    return resident, streamed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", sorted(MAKERS))
def test_streamed_losses_and_probes_are_bit_identical(arch, dtype):
    resident, streamed = pair(arch, dtype)
    lr, ls = loss_of(resident.module), loss_of(streamed.module)
    assert float(lr()) == float(ls())
    for seed in (0, 1, 77):
        assert probe(resident, seed, 1e-2, lr) == probe(streamed, seed, 1e-2, ls)
    step = {4: 300, 9: -120}
    resident.state.apply(step)
    streamed.state.apply(step)
    resident.refresh()
    streamed.refresh()
    assert float(lr()) == float(ls())
    assert resident.state.digest() == streamed.state.digest()
    assert probe(resident, 3, 1e-3, lr) == probe(streamed, 3, 1e-3, ls)


@pytest.mark.parametrize("staged,dual", [(False, True), (True, False), (True, True)], ids=["dual", "host-master", "host-dual"])
@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama-tied"])
def test_host_master_and_dual_passes_give_the_same_probes(arch, staged, dual):
    """The host-master path (each block's slice copied to the compute device, here the CPU) and
    the two passes run together in lockstep: the same losses as a resident copy beside them."""
    resident, streamed = pair(arch, torch.bfloat16, staged=staged, dual=dual)
    lr, ls = loss_of(resident.module), loss_of(streamed.module)
    for seed in range(4):
        assert probe(resident, seed, 1e-2, lr) == probe(streamed, seed, 1e-2, ls)
    assert float(lr()) == float(ls())
    assert streamed.state.digest() == resident.state.digest()
    if staged:
        assert not streamed._main.staging.entries or len(streamed._main.staging.entries) <= 1  # one block copied ahead at most


def test_parameters_stay_meta_in_the_compute_dtype_and_tied():
    _, streamed = pair("gpt2", torch.bfloat16)
    model = streamed.module
    loss_of(model)()
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert [n for n, _ in model.named_parameters()] == [s.name for s in streamed.state.manifest.slots]
    assert model.dtype == torch.bfloat16  # the same as with resident weights, so masks are built alike


def test_scratch_is_reused_from_pass_to_pass():
    _, streamed = pair("gpt2", torch.float32)
    seen = []
    hook = streamed.module.transformer.h[1].attn.c_attn.register_forward_pre_hook(lambda m, a: seen.append(m.weight.data_ptr()))
    loss = loss_of(streamed.module)
    for seed in range(3):
        probe(streamed, seed, 1e-3, loss)
    hook.remove()
    assert len(seen) == 6 and len(set(seen)) == 1
    arena = streamed._arenas[0]
    assert arena.top == 0 and arena.marks == []
    assert arena.buffer.numel() < streamed.state.manifest.total  # scratch, not a second model


def test_a_failing_forward_leaves_nothing_behind():
    resident, streamed = pair("gpt2", torch.float32)
    calls = {"n": 0}

    def boom(module, args):
        calls["n"] += 1
        raise RuntimeError("block failed")

    hook = streamed.module.transformer.h[0].mlp.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="block failed"):
        probe(streamed, 1, 1e-3, loss_of(streamed.module))
    hook.remove()
    assert streamed._main.frames == [] and streamed._arenas[0].top == 0
    assert probe(streamed, 2, 1e-3, loss_of(streamed.module)) == probe(resident, 2, 1e-3, loss_of(resident.module))


def test_dual_failure_in_one_pass_is_raised_and_the_weights_still_work():
    resident, streamed = pair("gpt2", torch.float32, staged=True, dual=True)

    def sometimes():
        if threading.current_thread().name.endswith("minus"):
            raise ValueError("bad batch")
        return loss_of(streamed.module)()

    with pytest.raises(ValueError, match="bad batch"):
        probe(streamed, 1, 1e-3, sometimes)
    assert probe(streamed, 2, 1e-3, loss_of(streamed.module)) == probe(resident, 2, 1e-3, loss_of(resident.module))


def test_dual_passes_that_diverge_fall_back_to_one_after_the_other(caplog):
    resident, streamed = pair("gpt2", torch.float32, staged=True, dual=True)
    model = streamed.module

    def uneven():
        if threading.current_thread().name.endswith("minus"):
            with torch.inference_mode():
                model.transformer.ln_f(torch.zeros(1, 32))  # a module the other pass does not run here
        return loss_of(model)()

    got = probe(streamed, 6, 1e-2, uneven)
    assert got == probe(resident, 6, 1e-2, loss_of(resident.module))
    assert not streamed.dual and "diverged" in caplog.text


def test_bind_refuses_a_master_elsewhere_without_staging():
    model = tiny_gpt2()
    state = FixedPointState.from_module(model, choose_unit_log2(model), 1)
    with pytest.raises(ValueError, match="staged"):
        StreamedWeights.bind(model, state, torch.float32, "meta", staged=False)
    with pytest.raises(ValueError, match="compute dtype"):
        StreamedWeights.bind(model, state, torch.int32)


def test_probe_values_are_finite_and_move_with_the_seed():
    _, streamed = pair("llama", torch.float32)
    loss = loss_of(streamed.module)
    gs = [probe(streamed, s, 1e-2, loss).g for s in range(6)]
    assert all(math.isfinite(g) for g in gs) and len(set(gs)) == 6
