from __future__ import annotations

import math

from helpers import write_classification

from seedfed.client.data import MinibatchSampler, read_classification
from seedfed.client.model import load_base
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober, provisional_step, scalar_uniforms
from seedfed.shared.quantize import decode_bytes


def _prober(spec, model_dir, data_path, seed=0):
    from seedfed.client.engine.state import ComputeWeights

    base = load_base(str(model_dir), spec.objective.kind)
    replica = Replica.from_base(spec, base.module)
    weights = ComputeWeights.bind(base.module, replica.state)
    objective = build_objective(spec.objective, base.module, base.tokenizer, "cpu")
    examples = read_classification(data_path, spec.objective.labels)
    return Prober(replica, weights, objective, MinibatchSampler(examples, spec.batch_size, seed))


def test_work_reverts_local_steps_exactly(tmp_path, bert_spec, bert_dir):
    data = write_classification(tmp_path / "d.tsv", n=24)
    prober = _prober(bert_spec, bert_dir, data)
    before = prober.replica.digest()
    # a large lr so the provisional steps are real moves of W
    result = prober.work(Assignment(round=1, slot=0, seeds=(3, 9, 3), lr=1.0))
    assert len(result.scalars) == 3 and len(result.gradients) == 3
    assert math.isfinite(result.loss)
    assert prober.replica.digest() == before
    assert any(provisional_step(g, 1.0, bert_spec.unit) != 0 for g in result.gradients[:2])
    for b, g in zip(decode_bytes(result.scalars), result.gradients):
        assert abs(b * bert_spec.scalar_scale - g) <= bert_spec.scalar_scale or abs(b) == 127


def test_work_is_reproducible_for_the_same_local_seed(tmp_path, bert_spec, bert_dir):
    data = write_classification(tmp_path / "d.tsv", n=24)
    a = _prober(bert_spec, bert_dir, data, seed=5).work(Assignment(2, 1, (1, 2), 1e-3))
    b = _prober(bert_spec, bert_dir, data, seed=5).work(Assignment(2, 1, (1, 2), 1e-3))
    assert a.scalars == b.scalars and a.gradients == b.gradients


def test_scalar_uniforms_are_keyed_by_round_and_slot():
    u = scalar_uniforms(7, 3, 0, 4)
    assert u == scalar_uniforms(7, 3, 0, 4)
    assert u != scalar_uniforms(7, 3, 1, 4) and u != scalar_uniforms(7, 4, 0, 4)
    assert all(0.0 <= x < 1.0 for x in u) and len(set(u)) == 4
