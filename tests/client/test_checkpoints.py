from __future__ import annotations

import dataclasses

import pytest
from fakecoord import synthetic_ledger

from seedfed.client.checkpoints import CheckpointError, CheckpointStore
from seedfed.client.model import load_base
from seedfed.client.replica import Replica


@pytest.fixture()
def replica(bert_spec, bert_dir):
    return Replica.from_base(bert_spec, load_base(str(bert_dir), "classification").module)


def test_roundtrip_keep_two_and_no_temporaries(tmp_path, bert_spec, replica):
    store = CheckpointStore(tmp_path, bert_spec, keep=2)
    digests = {}
    for rec in synthetic_ledger(bert_spec, 3):
        replica.apply(rec)
        store.save(replica)
        digests[rec.round] = replica.digest()
    assert store.rounds() == [3, 2]
    assert sorted(p.name for p in store.dir.iterdir()) == ["round-000000000002.safetensors", "round-000000000003.safetensors"]
    loaded = store.newest()
    assert loaded.round == 3 and loaded.digest() == digests[3] and loaded.head_hash == replica.head_hash
    assert store.newest(max_round=2).digest() == digests[2]


def test_corrupt_checkpoint_is_set_aside(tmp_path, bert_spec, replica):
    store = CheckpointStore(tmp_path, bert_spec)
    recs = synthetic_ledger(bert_spec, 2)
    replica.apply(recs[0])
    store.save(replica)
    replica.apply(recs[1])
    path = store.save(replica)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the weights: the recorded digest no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest"):
        store.load(2)
    loaded = store.newest()
    assert loaded.round == 1
    assert path.with_suffix(".bad").exists() and store.rounds() == [1]


def test_checkpoint_of_another_task_is_refused(tmp_path, bert_spec, replica):
    CheckpointStore(tmp_path, bert_spec).save(replica)
    other = dataclasses.replace(bert_spec, lr=bert_spec.lr * 2)  # same id, different genesis
    store = CheckpointStore(tmp_path, other)
    with pytest.raises(CheckpointError, match="genesis_hash"):
        store.load(0)


def test_discard_after(tmp_path, bert_spec, replica):
    store = CheckpointStore(tmp_path, bert_spec, keep=5)
    for rec in synthetic_ledger(bert_spec, 4):
        replica.apply(rec)
        store.save(replica)
    store.discard_after(2)
    assert store.rounds() == [2, 1]
