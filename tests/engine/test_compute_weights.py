"""Compute weights derived from the state, and the probe."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_bert, tiny_gpt2

from seedfed.client.engine import philox
from seedfed.client.engine.manifest import ManifestError
from seedfed.client.engine.probe import ProbeResult, probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2

TASK_SEED = 99


def bound_gpt2(dtype=torch.float32, seed=0):
    model = tiny_gpt2(seed)
    state = FixedPointState.from_module(model, choose_unit_log2(model), TASK_SEED)
    return model, state, ComputeWeights.bind(model, state, dtype)


def lm_loss(model, batch):
    def loss():
        with torch.no_grad():
            return model(batch, labels=batch).loss

    return loss


BATCH = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bind_makes_parameters_views_of_one_buffer(dtype):
    model, state, w = bound_gpt2(dtype)
    assert w.buffer.dtype == dtype and w.buffer.numel() == state.manifest.total
    base = w.buffer.untyped_storage().data_ptr()
    for slot in state.manifest.slots:
        p = model.get_parameter(slot.name)
        assert p.dtype == dtype
        assert p.untyped_storage().data_ptr() == base
        assert p.data_ptr() == w.buffer[slot.offset :].data_ptr()
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    want = (state.flat.to(torch.float32) * state.unit).to(dtype)
    assert torch.equal(w.buffer, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_refresh_reproduces_the_base_model(dtype):
    reference = tiny_gpt2()
    model, _, _ = bound_gpt2(dtype)
    with torch.no_grad():
        got = model(BATCH).logits.float()
        want = reference(BATCH).logits
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert torch.allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_perturb_is_w_plus_scale_z_from_W(dtype):
    _, state, w = bound_gpt2(dtype)
    z = philox.rademacher(TASK_SEED, 17, state.manifest.total).to(torch.float32)
    for scale in (1e-3, -1e-3, 0.25):
        w.perturb(17, scale)
        want = (state.flat.to(torch.float32) * state.unit + torch.tensor(scale, dtype=torch.float32) * z).to(dtype)
        assert torch.equal(w.buffer, want)
    w.refresh()
    assert torch.equal(w.buffer, (state.flat.to(torch.float32) * state.unit).to(dtype))


@pytest.mark.parametrize("dtype,n_probes", [(torch.float32, 100), (torch.bfloat16, 30)])
def test_hundred_probes_leave_the_digest_and_the_weights_unchanged(dtype, n_probes):
    model, state, w = bound_gpt2(dtype)
    d0 = state.digest()
    before = w.buffer.clone()
    loss = lm_loss(model, BATCH[:1, :8])
    gs = [probe(w, seed, 1e-3, loss).g for seed in range(n_probes)]
    assert state.digest() == d0
    assert torch.equal(w.buffer, before)
    assert all(math.isfinite(g) for g in gs)
    assert len(set(gs)) > n_probes // 2  # different seeds see different directions


def test_probe_matches_two_perturbed_forwards():
    model, state, w = bound_gpt2()
    loss = lm_loss(model, BATCH)
    r = probe(w, 5, 1e-2, loss)
    assert isinstance(r, ProbeResult)
    w.perturb(5, 1e-2)
    lp = float(loss())
    w.perturb(5, -1e-2)
    lm = float(loss())
    w.refresh()
    assert (r.loss_plus, r.loss_minus) == (lp, lm)
    assert r.g == (lp - lm) / 2e-2


def test_probe_is_deterministic_and_a_step_along_it_lowers_the_loss():
    model, state, w = bound_gpt2()
    loss = lm_loss(model, BATCH)
    r1 = probe(w, 8, 1e-3, loss)
    r2 = probe(w, 8, 1e-3, loss)
    assert r1 == r2
    l0 = float(loss())
    q = -int(math.copysign(round(1e-3 / state.unit), r1.g))  # a small step along -g, in units
    state.apply({8: q})
    w.refresh()
    assert float(loss()) < l0


def test_probe_restores_weights_when_the_loss_fails():
    model, state, w = bound_gpt2()
    before = w.buffer.clone()

    def boom():
        raise RuntimeError("batch failed")

    with pytest.raises(RuntimeError):
        probe(w, 1, 1e-3, boom)
    assert torch.equal(w.buffer, before)
    with pytest.raises(ValueError):
        probe(w, 1, 0.0, lambda: 0.0)


def test_refresh_follows_applied_steps():
    model, state, w = bound_gpt2(torch.bfloat16)
    state.apply({4: 1000})
    w.refresh()
    assert torch.equal(w.buffer, (state.flat.to(torch.float32) * state.unit).to(torch.bfloat16))


def test_bert_binds_and_probes():
    model = tiny_bert()
    state = FixedPointState.from_module(model, choose_unit_log2(model), 3)
    w = ComputeWeights.bind(model, state, torch.bfloat16)
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    r = probe(w, 2, 1e-2, lambda: model(ids).last_hidden_state.float().pow(2).mean())
    assert math.isfinite(r.g)


def test_bind_refuses_a_different_model():
    model = tiny_gpt2()
    state = FixedPointState.from_module(model, -20, 1)
    with pytest.raises(ManifestError):
        ComputeWeights.bind(tiny_bert(), state)
    with pytest.raises(ValueError):
        ComputeWeights.bind(model, state, torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_and_eager_compute_weights_agree(compiled_ok, monkeypatch, dtype):
    _, state, w = bound_gpt2(dtype)
    monkeypatch.setenv("SEEDFED_COMPILE", "0")
    w.perturb(31, 3e-3)
    eager = w.buffer.clone()
    monkeypatch.setenv("SEEDFED_COMPILE", "1")
    w.perturb(31, 3e-3)
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert torch.equal(w.buffer.view(bits), eager.view(bits))
    w.refresh()
    compiled_refresh = w.buffer.clone()
    monkeypatch.setenv("SEEDFED_COMPILE", "0")
    w.refresh()
    assert torch.equal(w.buffer.view(bits), compiled_refresh.view(bits))
    assert torch.equal(w.buffer, (state.flat.to(torch.float32) * state.unit).to(dtype))
