"""The same replica on a GPU: same digest as on CPU, and a probe that leaves it unchanged."""

from __future__ import annotations

import pytest
from fakecoord import synthetic_ledger
from helpers import write_classification

from seedfed.client.data import MinibatchSampler, read_classification
from seedfed.client.model import load_base, resolve_device
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_replica_matches_cpu(tmp_path, bert_spec, bert_dir, dtype):
    import torch

    from seedfed.client.engine.state import ComputeWeights

    device = resolve_device("cuda")
    records = synthetic_ledger(bert_spec, 20)
    cpu = Replica.from_base(bert_spec, load_base(str(bert_dir), "classification").module)
    cpu.catch_up(records)
    base = load_base(str(bert_dir), "classification", device)
    gpu = Replica.from_base(bert_spec, base.module, device)
    assert gpu.digest() == bert_spec.base_digest
    weights = ComputeWeights.bind(base.module, gpu.state, dtype=getattr(torch, dtype))
    gpu.catch_up(records[:10], fold_history=False)
    gpu.catch_up(records[10:])
    weights.refresh()
    assert gpu.digest() == cpu.digest()
    objective = build_objective(bert_spec.objective, base.module, base.tokenizer, device)
    examples = read_classification(write_classification(tmp_path / "d.tsv", n=16), bert_spec.objective.labels)
    prober = Prober(gpu, weights, objective, MinibatchSampler(examples, bert_spec.batch_size, 0))
    result = prober.work(Assignment(21, 0, (1, 2, 3), 1.0))
    assert len(result.scalars) == 3
    assert gpu.digest() == cpu.digest()
