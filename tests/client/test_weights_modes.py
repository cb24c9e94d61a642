"""Every way of holding the weights gives the same digests and the same submissions: the base
streamed from safetensors or loaded whole, compute weights resident or streamed, the master
beside the compute device or staged to it block by block."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner
from fakecoord import FakeCoordinator, Served, synthetic_ledger
from helpers import wait_until, write_classification, write_dolly
from safetensors.torch import load_file
from test_daemon import Running, reference_digest

from seedfed.client.data import MinibatchSampler, read_classification, read_instructions
from seedfed.client.engine.errors import ModelLoadError
from seedfed.client.engine.state import ComputeWeights
from seedfed.client.engine.streamed import StreamedWeights
from seedfed.client.export import export_command, rebuild, write_model_dir
from seedfed.client.model import describe_base, load_base, open_base
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.worker import Assignment, Prober
from seedfed.shared.ledger import write_ledger_file


def resaved(src, dst, dtype):
    """The same model directory with its weights stored in ``dtype`` (tokenizer and config kept)."""
    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    kind = "causal_lm" if "gpt2" in str(src) else "classification"
    load_base(str(src), kind).module.to(dtype).save_pretrained(dst)
    return dst


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "which,kind", [("gpt2_dir", "causal_lm"), ("gpt2_dir", "classification"), ("bert_dir", "classification")]
)
def test_streamed_description_equals_the_full_load(tmp_path, request, which, kind, dtype):
    directory = resaved(request.getfixturevalue(which), tmp_path / "m", dtype)
    source = open_base(str(directory), kind)
    assert source.streamed and all(p.is_meta for p in source.module.parameters())
    assert source.describe(123) == describe_base(load_base(str(directory), kind).module, 123)
    assert source.describe(123, -26) == describe_base(load_base(str(directory), kind).module, 123, -26)


def test_a_pickle_checkpoint_loads_whole_with_the_same_description(tmp_path, bert_dir):
    directory = shutil.copytree(bert_dir, tmp_path / "bin")
    tensors = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(tensors, directory / "pytorch_model.bin")
    source = open_base(str(directory), "classification")
    assert not source.streamed
    assert source.describe(5) == open_base(str(bert_dir), "classification").describe(5)


def prober(spec, model_dir, examples, mode, **bind):
    source = open_base(str(model_dir), spec.objective.kind)
    replica = Replica.from_state(spec, source.load_state(spec.task_seed, spec.unit_log2))
    if mode == "resident":
        weights = ComputeWeights.bind(source.module, replica.state, torch.bfloat16)
    else:
        weights = StreamedWeights.bind(source.module, replica.state, torch.bfloat16, **bind)
    objective = build_objective(spec.objective, source.module, source.tokenizer, "cpu")
    return Prober(replica, weights, objective, MinibatchSampler(examples, spec.batch_size, 0))


@pytest.mark.parametrize("kind", ["classification", "causal_lm"])
def test_host_master_beside_a_host_copy_submits_the_same_bytes(tmp_path, kind, bert_spec, gpt2_dir):
    """The host-master path with the CPU as its compute device (each block's slice copied out of
    the master, both passes in lockstep) against a resident replica of its own: the same
    scalars, losses and digests, round after round."""
    from helpers import model_spec

    if kind == "classification":
        spec, model_dir = bert_spec, bert_spec.base_model
        examples = read_classification(write_classification(tmp_path / "d.tsv", n=24), spec.objective.labels)
    else:
        spec, model_dir = model_spec(gpt2_dir, kind="causal_lm"), gpt2_dir
        examples = read_instructions(write_dolly(tmp_path / "d.jsonl", n=12))
    host = prober(spec, model_dir, examples, "resident")
    staged = prober(spec, model_dir, examples, "streamed", device="cpu", staged=True, dual=True)
    records = synthetic_ledger(spec, 6)
    for rec in records:
        r1 = host.work(Assignment(rec.round, 0, (rec.round, rec.round + 40), 1e-3))
        r2 = staged.work(Assignment(rec.round, 0, (rec.round, rec.round + 40), 1e-3))
        assert (r1.scalars, r1.gradients, r1.loss) == (r2.scalars, r2.gradients, r2.loss)
        host.replica.apply(rec)
        staged.replica.apply(rec)
        host.weights.refresh()
        staged.weights.refresh()
        assert host.replica.digest() == staged.replica.digest()
    assert host.replica.digest() == reference_digest(spec, model_dir, records)


def test_export_writes_the_weights_a_full_model_export_wrote(tmp_path, bert_spec, bert_dir):
    records = synthetic_ledger(bert_spec, 5)
    rebuilt = rebuild(bert_spec, records)
    out = write_model_dir(rebuilt, tmp_path / "new")
    assert rebuilt.weights is None  # writing files bound no compute weights
    # what exporting used to do: load the whole model, bind compute weights, save_pretrained
    old = load_base(str(bert_dir), "classification")
    replica = Replica.from_base(bert_spec, old.module)
    replica.catch_up(records)
    ComputeWeights.bind(old.module, replica.state)
    for p in old.module.parameters():
        p.data = p.data.clone()
    old.module.save_pretrained(tmp_path / "old")
    new_tensors, old_tensors = load_file(out / "model.safetensors"), load_file(tmp_path / "old" / "model.safetensors")
    assert sorted(new_tensors) == sorted(old_tensors)
    assert all(torch.equal(new_tensors[k], old_tensors[k]) for k in old_tensors)
    reloaded = load_base(str(out), "classification")  # any loader reads it
    assert all(torch.equal(dict(reloaded.module.named_parameters())[k], t) for k, t in old_tensors.items())
    assert rebuilt.digest == replica.digest()


def test_export_command_with_sharded_bf16_base(tmp_path, gpt2_dir, monkeypatch):
    from helpers import model_spec

    from seedfed.client.engine import saving

    base = shutil.copytree(gpt2_dir, tmp_path / "base")
    (base / "model.safetensors").unlink()
    load_base(str(gpt2_dir), "causal_lm").module.to(torch.bfloat16).save_pretrained(base, max_shard_size="20KB")
    spec = model_spec(base, kind="causal_lm")
    records = synthetic_ledger(spec, 3)
    write_ledger_file(tmp_path / "t.ledger", spec, records)
    monkeypatch.setattr(saving, "MAX_SHARD_BYTES", 50_000)
    result = CliRunner().invoke(export_command, ["--ledger", str(tmp_path / "t.ledger"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert reference_digest(spec, base, records) in result.output
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert open_base(str(tmp_path / "out"), "causal_lm").streamed
    assert load_base(str(tmp_path / "out"), "causal_lm").module.config.dtype == torch.float32


@pytest.fixture()
def served(bert_spec):
    records = synthetic_ledger(bert_spec, 8)
    fake = FakeCoordinator(bert_spec, records)
    srv = Served(fake)
    yield fake, srv.target, records
    srv.stop()


def test_daemon_with_streamed_weights_resyncs_from_the_base_in_place(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    fake.deny_digest[8] = 1  # one mismatch: the client reads the base again into its master and catches up
    run = Running(tmp_path, target, bert_spec, weights="streamed", compute_dtype="bfloat16")
    try:
        wait_until(lambda: len(run.events("caught_up")) >= 2, 60, what=run.events)
        state = run.daemon.replica.state
    finally:
        run.stop()
    ready = run.events("ready")[0]
    assert (ready["weights"], ready["master"]) == ("streamed", "cpu")
    assert run.events("resync")[0]["to"] == "base"
    assert run.daemon.replica.state is state  # moved in place: no second master
    assert run.events("caught_up")[-1]["digest"] == reference_digest(bert_spec, bert_dir, records)
    assert all(p.is_meta for p in run.daemon.module.parameters())


def test_daemon_refuses_a_layout_the_machine_cannot_hold_before_joining(tmp_path, bert_spec, served, monkeypatch):
    from seedfed.client.engine import memory

    fake, target, _ = served
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    run = Running(tmp_path, target, bert_spec, weights="resident")
    run.thread.join(60)
    assert isinstance(run.error, ModelLoadError) and "needs" in str(run.error) and "available" in str(run.error)
    assert fake.joins == []  # refused before joining
