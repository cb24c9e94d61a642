from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import pytest
from fakecoord import synthetic_ledger

import seedfed.client.checkpoints as checkpoints
from seedfed.client.checkpoints import CheckpointError, CheckpointStore
from seedfed.client.model import load_base
from seedfed.client.replica import Replica
from seedfed.shared.ledger import make_record
from seedfed.shared.steps import fold


@pytest.fixture(scope="module")
def base_replica(bert_spec, bert_dir):
    return Replica.from_base(bert_spec, load_base(str(bert_dir), "classification").module)


@pytest.fixture()
def replica(base_replica):
    return Replica(base_replica.spec, base_replica.state.copy())


def fresh(base_replica) -> Replica:
    return Replica(base_replica.spec, base_replica.state.copy())


def follow(store, replica, records, digests, every=1):
    """What the daemon does: apply, tell the store, checkpoint."""
    for rec in records:
        replica.apply(rec)
        store.journal([rec])
        digests[rec.round] = replica.digest()
        if rec.round % every == 0:
            store.save(replica)


def names(store) -> list[str]:
    return sorted(p.name for p in store.dir.iterdir())


def test_one_full_then_small_deltas_restore_in_place(tmp_path, bert_spec, replica, base_replica):
    store = CheckpointStore(tmp_path, bert_spec)
    digests = {}
    follow(store, replica, synthetic_ledger(bert_spec, 3), digests)
    assert names(store) == ["round-000000000001.safetensors", "round-000000000002.delta.json", "round-000000000003.delta.json"]
    assert store.last_saved.kind == "delta" and store.last_saved.round == 3
    assert store.rounds() == [3, 2, 1]
    full = store.path_for(1)
    assert full.stat().st_size > 4 * replica.state.manifest.total
    assert store.delta_path_for(3).stat().st_size < 2048  # 8 folded seeds

    target = fresh(base_replica)
    base_digest = target.digest()
    restarted = CheckpointStore(tmp_path, bert_spec)
    assert restarted.restore_seconds is None
    assert restarted.restore(target)
    assert restarted.restore_seconds > 0
    assert (target.round, target.digest(), target.head_hash) == (3, digests[3], replica.head_hash)
    assert target.digest() != base_digest
    assert restarted.load(2).digest() == digests[2]
    assert restarted.load(1).digest() == digests[1]
    assert restarted.newest(max_round=2).digest() == digests[2]


def test_restore_continues_the_journal(tmp_path, bert_spec, replica, base_replica):
    recs = synthetic_ledger(bert_spec, 4)
    store = CheckpointStore(tmp_path, bert_spec)
    digests = {}
    follow(store, replica, recs[:2], digests)
    target = fresh(base_replica)
    restarted = CheckpointStore(tmp_path, bert_spec)
    assert restarted.restore(target) and target.round == 2
    follow(restarted, target, recs[2:], digests)
    assert restarted.last_saved.kind == "delta"
    again = fresh(base_replica)
    assert CheckpointStore(tmp_path, bert_spec).restore(again)
    assert again.round == 4 and again.digest() == target.digest() == digests[4]


def test_full_when_the_delta_would_replay_more_than_a_full_write(tmp_path, bert_spec, replica, base_replica):
    recs = synthetic_ledger(bert_spec, 3, seeds_per_round=4)
    limit = len(fold(r.entries for r in recs[1:2]))  # round 2 alone fits; rounds 2-3 folded do not
    assert len(fold(r.entries for r in recs[1:3])) > limit
    store = CheckpointStore(tmp_path, bert_spec, max_replays=limit)
    digests = {}
    follow(store, replica, recs[:2], digests)
    assert store.last_saved.kind == "delta"
    follow(store, replica, recs[2:], digests)
    assert store.last_saved.kind == "full"
    assert names(store) == ["round-000000000003.safetensors"]  # the older full and its delta are gone
    target = fresh(base_replica)
    assert CheckpointStore(tmp_path, bert_spec).restore(target) and target.digest() == digests[3]


def test_a_gap_in_the_journal_makes_the_next_checkpoint_full(tmp_path, bert_spec, replica):
    recs = synthetic_ledger(bert_spec, 3)
    store = CheckpointStore(tmp_path, bert_spec)
    follow(store, replica, recs[:1], {})
    replica.apply(recs[1])  # applied without telling the store
    replica.apply(recs[2])
    store.journal([recs[2]])
    store.save(replica)
    assert store.last_saved.kind == "full" and store.full_rounds() == [3]


def test_a_record_off_the_chain_ends_the_journal(tmp_path, bert_spec, replica):
    recs = synthetic_ledger(bert_spec, 2)
    store = CheckpointStore(tmp_path, bert_spec)
    follow(store, replica, recs[:1], {})
    forged = make_record(b"\0" * 32, 2, recs[1].entries)
    store.journal([forged])
    replica.apply(recs[1])
    store.save(replica)
    assert store.last_saved.kind == "full"


def test_recorded_digest_is_the_state_digest_with_or_without_a_given_digest(tmp_path, bert_spec, replica, base_replica):
    recs = synthetic_ledger(bert_spec, 2)
    for i, given in enumerate((False, True)):
        store = CheckpointStore(tmp_path / str(i), bert_spec)
        state = Replica(bert_spec, base_replica.state.copy())
        state.apply(recs[0])
        path = store.save(state, state.digest() if given else None)
        assert json.loads(path.read_bytes()[8:].split(b"}}", 1)[0] + b"}}")["__metadata__"]["digest"] == state.digest()
        target = fresh(base_replica)
        assert CheckpointStore(tmp_path / str(i), bert_spec).restore(target) and target.digest() == state.digest()


def _rewrite_delta(path, **changes):
    doc = json.loads(path.read_text())
    doc["delta"].update(changes)
    doc["check"] = checkpoints._checksum(doc["delta"])
    path.write_text(json.dumps(doc))


def test_damaged_deltas_fall_back_to_the_previous_one_then_the_full(tmp_path, bert_spec, replica, base_replica):
    store = CheckpointStore(tmp_path, bert_spec, keep_deltas=2)
    digests = {}
    follow(store, replica, synthetic_ledger(bert_spec, 3), digests)
    # round 3: bytes flipped (its checksum fails); round 2: a well-formed delta whose steps are wrong
    d3 = store.delta_path_for(3)
    d3.write_text(d3.read_text().replace('"entries":[[', '"entries":[[1'))
    _rewrite_delta(store.delta_path_for(2), entries=[[5, 1]])

    target = fresh(base_replica)
    restarted = CheckpointStore(tmp_path, bert_spec)
    with pytest.raises(CheckpointError, match="checksum"):
        restarted.load(3)
    with pytest.raises(CheckpointError, match="after replay"):
        restarted.load(2)
    assert restarted.restore(target)
    assert target.round == 1 and target.digest() == digests[1]
    assert names(restarted) == [
        "round-000000000001.safetensors",
        "round-000000000002.delta.json.bad",
        "round-000000000003.delta.json.bad",
    ]
    # the journal continues from the full checkpoint: the next checkpoint is a delta again
    follow(restarted, target, synthetic_ledger(bert_spec, 1, first=2, previous=target.head_hash, seed=9), digests)
    assert restarted.last_saved.kind == "delta" and restarted.rounds() == [2, 1]


def test_damaged_full_leaves_the_replica_untouched(tmp_path, bert_spec, replica, base_replica):
    store = CheckpointStore(tmp_path, bert_spec)
    follow(store, replica, synthetic_ledger(bert_spec, 2), {})
    full = store.path_for(1)
    data = bytearray(full.read_bytes())
    data[-5] ^= 0xFF
    full.write_bytes(bytes(data))
    target = fresh(base_replica)
    before = target.digest()
    restarted = CheckpointStore(tmp_path, bert_spec)
    with pytest.raises(CheckpointError, match="digest"):
        restarted.load(1)
    assert not restarted.restore(target)
    assert target.round == 0 and target.digest() == before
    assert restarted.rounds() == [] and (tmp_path / bert_spec.task_id / (full.name + ".bad")).exists()
    assert restarted.newest() is None


def test_truncated_full_is_refused(tmp_path, bert_spec, replica):
    store = CheckpointStore(tmp_path, bert_spec)
    follow(store, replica, synthetic_ledger(bert_spec, 1), {})
    full = store.path_for(1)
    full.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        CheckpointStore(tmp_path, bert_spec).load(1)


def test_checkpoint_of_another_task_is_refused(tmp_path, bert_spec, replica, base_replica):
    store = CheckpointStore(tmp_path, bert_spec)
    follow(store, replica, synthetic_ledger(bert_spec, 2), {})
    other = dataclasses.replace(bert_spec, lr=bert_spec.lr * 2)  # same id, different genesis
    theirs = CheckpointStore(tmp_path, other)
    with pytest.raises(CheckpointError, match="genesis_hash"):
        theirs.load(1)
    with pytest.raises(CheckpointError, match="genesis_hash"):
        theirs.load(2)
    target = Replica(other, base_replica.state.copy())
    assert not theirs.restore(target) and target.round == 0


def test_discard_after(tmp_path, bert_spec, replica, base_replica):
    store = CheckpointStore(tmp_path, bert_spec, keep_deltas=5)
    digests = {}
    follow(store, replica, synthetic_ledger(bert_spec, 4), digests)
    store.discard_after(2)
    assert store.rounds() == [2, 1]
    target = fresh(base_replica)
    assert store.restore(target) and target.digest() == digests[2]
    store.discard_after(0)
    assert store.rounds() == []


def test_no_room_for_a_full_checkpoint(tmp_path, bert_spec, replica, monkeypatch):
    recs = synthetic_ledger(bert_spec, 3)
    store = CheckpointStore(tmp_path, bert_spec, max_replays=0)
    follow(store, replica, recs[:1], {})
    full_disk = shutil._ntuple_diskusage(100 << 30, 100 << 30, 1000)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: full_disk)
    follow(store, replica, recs[1:2], {})  # past max_replays, but a delta is what fits
    assert store.last_saved.kind == "delta"
    replica.apply(recs[2])  # not journaled: only a full checkpoint would do
    with pytest.raises(CheckpointError, match="GiB free"):
        store.save(replica)
    assert store.rounds() == [2, 1]


class _Snapshots:
    """Copies of the checkpoint directory at every point where a kill could land:
    before each write, fsync, rename and removal the store makes."""

    def __init__(self, directory: pathlib.Path, out: pathlib.Path) -> None:
        self.directory, self.out, self.taken = directory, out, []
        self.completed = 0  # round of the newest save() that returned

    def take(self) -> None:
        if not self.directory.exists():
            return
        dest = self.out / f"{len(self.taken):04d}"
        shutil.copytree(self.directory, dest)
        for tmp in dest.glob(".tmp-*"):  # a kill mid-write leaves a torn temporary file
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
        self.taken.append((dest, self.completed))


def test_a_kill_at_any_point_leaves_a_loadable_checkpoint_set(tmp_path, bert_spec, replica, base_replica, monkeypatch):
    store = CheckpointStore(tmp_path / "cache", bert_spec, max_replays=8, keep_deltas=2)
    snaps = _Snapshots(store.dir, tmp_path / "snaps")
    real_replace, real_fsync, real_unlink = os.replace, os.fsync, pathlib.Path.unlink

    def replace(a, b):
        snaps.take()
        real_replace(a, b)

    def fsync(fd):
        snaps.take()
        real_fsync(fd)

    def unlink(self, missing_ok=False):
        snaps.take()
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    digests, kinds = {}, []
    for rec in synthetic_ledger(bert_spec, 7, seeds_per_round=3):
        replica.apply(rec)
        store.journal([rec])
        digests[rec.round] = replica.digest()
        store.save(replica)
        kinds.append(store.last_saved.kind)
        snaps.completed = rec.round
    monkeypatch.undo()
    assert kinds.count("full") >= 2 and kinds.count("delta") >= 2 and len(snaps.taken) > 30, kinds

    for snapshot, completed in snaps.taken:
        target = fresh(base_replica)
        restored = CheckpointStore(tmp_path, bert_spec)
        restored.dir = snapshot
        assert restored.restore(target) == (completed > 0 or any(snapshot.glob("round-*"))), snapshot
        if target.round:
            assert target.round >= completed, snapshot  # a finished checkpoint is never lost
            assert target.digest() == digests[target.round], snapshot
