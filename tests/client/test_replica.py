from __future__ import annotations

import dataclasses

import pytest
import torch
from fakecoord import synthetic_ledger

from seedfed.client.model import describe_base, load_base
from seedfed.client.replica import BaseDigestMismatch, Replica
from seedfed.shared.ledger import LedgerError, RoundRecord
from seedfed.shared.taskspec import TaskSpecError


def _replica(spec, model_dir):
    return Replica.from_base(spec, load_base(str(model_dir), spec.objective.kind).module)


def test_base_digest_matches_description(bert_spec, bert_dir):
    replica = _replica(bert_spec, bert_dir)
    assert replica.digest() == bert_spec.base_digest
    assert replica.round == 0 and replica.head_hash == bert_spec.genesis_hash()
    assert (
        describe_base(load_base(str(bert_dir), "classification").module, bert_spec.task_seed, bert_spec.unit_log2).base_digest
        == bert_spec.base_digest
    )


def test_wrong_base_is_refused_naming_both_digests(bert_spec, other_bert_dir):
    with pytest.raises(BaseDigestMismatch) as info:
        _replica(bert_spec, other_bert_dir)
    message = str(info.value)
    assert bert_spec.base_digest in message
    other = describe_base(
        load_base(str(other_bert_dir), "classification").module, bert_spec.task_seed, bert_spec.unit_log2
    ).base_digest
    assert other in message


def test_fold_replay_and_live_agree(bert_spec, bert_dir):
    records = synthetic_ledger(bert_spec, 40, seeds_per_round=4)
    live = _replica(bert_spec, bert_dir)
    for rec in records:
        live.apply(rec)
    folded = _replica(bert_spec, bert_dir)
    stats = folded.catch_up(records)
    replayed = _replica(bert_spec, bert_dir)
    rstats = replayed.catch_up(records, fold_history=False)
    assert stats.folded and stats.replays <= bert_spec.pool_size and stats.rounds == 40
    assert rstats.replays == 160 and not rstats.folded
    assert live.digest() == folded.digest() == replayed.digest() != bert_spec.base_digest
    assert live.head_hash == folded.head_hash == records[-1].hash and folded.round == 40


def test_tampered_record_is_refused_and_changes_nothing(bert_spec, bert_dir):
    records = synthetic_ledger(bert_spec, 5)
    replica = _replica(bert_spec, bert_dir)
    replica.apply(records[0])
    before = replica.digest()
    bad = RoundRecord(records[1].round, records[1].seeds, records[1].steps, bytes(32))
    with pytest.raises(LedgerError, match="does not extend the chain"):
        replica.apply(bad)
    forged_step = RoundRecord(records[1].round, records[1].seeds, (99,) + records[1].steps[1:], records[1].hash)
    with pytest.raises(LedgerError):
        replica.apply(forged_step)
    with pytest.raises(LedgerError):
        replica.catch_up([records[1], bad, records[3]])
    with pytest.raises(LedgerError, match="expected round 2"):
        replica.apply(records[2])
    assert replica.digest() == before and replica.round == 1


def test_reset_to_moves_in_place(bert_spec, bert_dir):
    records = synthetic_ledger(bert_spec, 3)
    a = _replica(bert_spec, bert_dir)
    b = _replica(bert_spec, bert_dir)
    b.catch_up(records)
    flat = a.state.flat
    a.reset_to(b)
    assert a.state.flat is flat and a.digest() == b.digest() and a.round == 3


def test_a_task_that_tunes_some_parameters_moves_only_them_on_every_path(bert_spec, bert_dir):
    spec = dataclasses.replace(bert_spec, trainable=("*bias", "*LayerNorm.weight"))
    records = synthetic_ledger(spec, 20, seeds_per_round=4)
    live, folded = _replica(spec, bert_dir), _replica(spec, bert_dir)
    base = live.state.flat.clone()
    for rec in records:
        live.apply(rec)
    folded.catch_up(records)
    assert live.digest() == folded.digest() != spec.base_digest
    moved = (live.state.flat != base).nonzero().flatten().tolist()
    names = {s.name for s in live.state.manifest.slots for i in moved[:: max(1, len(moved) // 200)] if s.offset <= i < s.end}
    assert names and all(n.endswith("bias") or n.endswith("LayerNorm.weight") for n in names)
    frozen = torch.ones_like(base, dtype=torch.bool)
    for a, b in live.state.ranges():
        frozen[a:b] = False
    assert torch.equal(live.state.flat[frozen], base[frozen])


def test_a_trainable_pattern_this_model_lacks_is_a_task_error_naming_it(bert_spec, bert_dir):
    spec = dataclasses.replace(bert_spec, trainable=("*bias", "model.layers.*.mlp.*"))
    with pytest.raises(TaskSpecError, match=r"'model\.layers\.\*\.mlp\.\*' matches none"):
        _replica(spec, bert_dir)
