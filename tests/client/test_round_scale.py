"""A client encodes its scalars at the scale its RoundOpen announces (the
genesis scale when a coordinator announces none)."""

from __future__ import annotations

from helpers import write_classification

from seedfed.client.data import MinibatchSampler, read_classification
from seedfed.client.model import load_base
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober, assignment_from
from seedfed.shared.quantize import decode_bytes
from seedfed.v1 import coordinator_pb2 as pb


def _prober(spec, model_dir, data_path, seed):  # noqa: ANN001, ANN202
    from seedfed.client.engine.state import ComputeWeights

    base = load_base(str(model_dir), spec.objective.kind)
    replica = Replica.from_base(spec, base.module)
    weights = ComputeWeights.bind(base.module, replica.state)
    objective = build_objective(spec.objective, base.module, base.tokenizer, "cpu")
    return Prober(replica, weights, objective, MinibatchSampler(read_classification(data_path, spec.objective.labels), 4, seed))


def test_the_announced_scale_is_taken_and_the_genesis_scale_is_the_fallback(bert_spec) -> None:  # noqa: ANN001
    announced = assignment_from(pb.RoundOpen(round=4, slot=1, seeds=[7, 8], lr=1e-3, scalar_scale=0.4), bert_spec)
    assert announced.scalar_scale == 0.4
    silent = assignment_from(pb.RoundOpen(round=4, slot=1, seeds=[7, 8], lr=1e-3), bert_spec)
    assert silent.scalar_scale == bert_spec.scalar_scale


def test_bytes_are_encoded_at_the_assignments_scale(tmp_path, bert_spec, bert_dir) -> None:  # noqa: ANN001
    data = write_classification(tmp_path / "d.tsv", n=24)
    scale = bert_spec.scalar_scale * 8
    a = _prober(bert_spec, bert_dir, data, seed=5).work(Assignment(2, 1, (1, 2, 3), 1e-3, scale))
    b = _prober(bert_spec, bert_dir, data, seed=5).work(Assignment(2, 1, (1, 2, 3), 1e-3))
    assert a.gradients == b.gradients  # the same probes
    for x, g in zip(decode_bytes(a.scalars), a.gradients):
        assert abs(x * scale - g) <= scale or abs(x) == 127
    assert a.scalars != b.scalars
