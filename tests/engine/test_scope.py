"""A trainable scope: z covers only the named parameters, each element with its whole-model sign,
and every way of holding the weights (resident, streamed, replayed) agrees."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bert

from seedfed.client.engine import philox
from seedfed.client.engine import state as state_module
from seedfed.client.engine.manifest import ManifestError
from seedfed.client.engine.probe import probe
from seedfed.client.engine.state import ComputeWeights, FixedPointState, choose_unit_log2
from seedfed.client.engine.streamed import StreamedWeights

TASK_SEED = 9
PATTERNS = ("*bias", "*LayerNorm.weight")
BATCH = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))


def base_state():
    model = tiny_bert()
    return model, FixedPointState.from_module(model, choose_unit_log2(model), TASK_SEED)


def loss_of(model):
    def loss():
        with torch.inference_mode():
            return model(BATCH).last_hidden_state.float().pow(2).mean()

    return loss


def test_spans_merge_adjacent_parameters_and_name_a_pattern_that_matches_nothing():
    _, state = base_state()
    m = state.manifest
    spans = m.spans(PATTERNS)
    chosen = [s for s in m.slots if s.name.endswith("bias") or s.name.endswith("LayerNorm.weight")]
    assert sum(b - a for a, b in spans) == sum(s.numel for s in chosen)
    assert len(spans) < len(chosen)  # a LayerNorm's weight and bias are adjacent: one span
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert m.spans(["*"]) == ((0, m.total),)
    with pytest.raises(ManifestError, match=r"'\*Layernorm\.weight' matches none"):  # case-sensitive everywhere
        m.spans(["*bias", "*Layernorm.weight"])


# 1: every range passed on its own; 100: some gathered, some not; the default: all gathered
SHORT_RANGES = pytest.mark.parametrize("short_range", [1, 100, state_module.SHORT_RANGE], ids=["ranges", "mixed", "gathered"])


@SHORT_RANGES
def test_a_scoped_step_moves_only_the_scope_and_as_the_whole_model_step_does(short_range, monkeypatch):
    monkeypatch.setattr(state_module, "SHORT_RANGE", short_range)
    _, state = base_state()
    spans = state.manifest.spans(PATTERNS)
    whole, scoped = state.copy(), state.copy()
    scoped.restrict(spans)
    assert scoped.copy().scope == spans and scoped.to("cpu").scope == spans
    whole.apply({3: 40, 8: -17})
    scoped.apply({3: 40, 8: -17})
    inside = torch.zeros(state.flat.numel(), dtype=torch.bool)
    for a, b in spans:
        inside[a:b] = True
    assert torch.equal(scoped.flat[inside], whole.flat[inside])
    assert torch.equal(scoped.flat[~inside], state.flat[~inside])
    assert not torch.equal(whole.flat[~inside], state.flat[~inside])
    scoped.revert({3: 40, 8: -17})
    assert scoped.digest() == state.digest()


def test_a_scoped_step_near_the_int32_limit_checks_only_the_scope():
    _, state = base_state()
    spans = state.manifest.spans(PATTERNS)
    state.restrict(spans)
    frozen_at = spans[0][0] - 1  # a weight outside the scope, at the edge of int32
    state.flat[frozen_at] = 2**31 - 2
    start = state.flat.clone()
    state.apply({5: 1000})  # the bound says "maybe overflow": the exact, checked pass runs, over the scope only
    moved = (state.flat != start).nonzero().flatten()
    assert moved.numel() > 0 and all(any(a <= int(i) < b for a, b in spans) for i in moved)
    assert int(state.flat[frozen_at]) == 2**31 - 2


@pytest.mark.parametrize("bad", [(), ((5, 5),), ((10, 20), (15, 30)), ((20, 30), (0, 10)), ((0, 10**9),)])
def test_restrict_refuses_spans_that_are_not_a_scope(bad):
    _, state = base_state()
    with pytest.raises(ValueError, match="scope"):
        state.restrict(bad)


def test_pieces_cut_a_range_at_the_scope_edges():
    _, state = base_state()
    state.restrict(((10, 20), (30, 40)))
    assert list(state.pieces(0, 50)) == [(0, 10, False), (10, 20, True), (20, 30, False), (30, 40, True), (40, 50, False)]
    assert list(state.pieces(15, 35)) == [(15, 20, True), (20, 30, False), (30, 35, True)]
    assert list(state.pieces(21, 29)) == [(21, 29, False)]


@SHORT_RANGES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_resident_and_streamed_probes_agree_under_a_scope_and_perturb_only_it(dtype, short_range, monkeypatch):
    monkeypatch.setattr(state_module, "SHORT_RANGE", short_range)
    resident_model, streamed_model = tiny_bert(), tiny_bert()
    state = FixedPointState.from_module(resident_model, choose_unit_log2(resident_model), TASK_SEED)
    spans = state.manifest.spans(PATTERNS)
    state.restrict(spans)
    other = state.copy()
    resident = ComputeWeights.bind(resident_model, state, dtype)
    streamed = StreamedWeights.bind(streamed_model, other, dtype)
    plain = resident.buffer.clone()
    resident.perturb(7, 1e-2)
    changed = (resident.buffer != plain).nonzero().flatten()
    assert changed.numel() > 0
    assert all(any(a <= int(i) < b for a, b in spans) for i in changed)
    whole = torch.empty_like(resident.buffer)  # inside the scope, the whole-model pass's bits
    philox.write_perturbed_(whole, state.flat, state.unit, TASK_SEED, 7, 1e-2)
    inside = torch.zeros_like(resident.buffer, dtype=torch.bool)
    for a, b in spans:
        inside[a:b] = True
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert torch.equal(resident.buffer[inside].view(bits), whole.to(dtype)[inside].view(bits))
    resident.refresh()
    lr, ls = loss_of(resident.module), loss_of(streamed.module)
    for seed in (0, 7, 31):
        assert probe(resident, seed, 1e-2, lr) == probe(streamed, seed, 1e-2, ls)
    # the same probe without the scope sees another loss: the scope is what was measured
    unscoped_model = tiny_bert()
    unscoped = ComputeWeights.bind(unscoped_model, FixedPointState.from_module(unscoped_model, state.unit_log2, TASK_SEED), dtype)
    assert probe(unscoped, 7, 1e-2, loss_of(unscoped_model)) != probe(resident, 7, 1e-2, lr)
