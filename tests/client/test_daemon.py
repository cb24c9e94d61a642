"""The daemon against a small in-process coordinator: catch-up, live rounds,
refusal of a tampered record, digest mismatch, resume from a checkpoint."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from fakecoord import FakeCoordinator, Served, commit_message, synthetic_ledger
from helpers import wait_until, write_classification

from seedfed.client.daemon import ClientConfig, ClientDaemon
from seedfed.client.model import load_base
from seedfed.client.progress import Reporter, read_events
from seedfed.client.replica import Replica
from seedfed.shared.ledger import make_record
from seedfed.v1 import coordinator_pb2 as pb


def reference_digest(spec, model_dir, records):
    replica = Replica.from_base(spec, load_base(str(model_dir), spec.objective.kind).module)
    replica.catch_up(records, fold_history=False)
    return replica.digest()


class Running:
    """A daemon on a thread, with its events file."""

    def __init__(self, tmp_path, target, spec, cache=None, name="c1", **extra):
        self.events_path = tmp_path / f"{name}-events.jsonl"
        data = write_classification(tmp_path / f"{name}.tsv", n=16, seed=hash(name) % 100)
        config = ClientConfig(
            coordinator=target,
            task_id=spec.task_id,
            data=data,
            cache=cache or tmp_path / f"{name}-cache",
            name=name,
            checkpoint_every=2,
            backoff_cap_s=0.5,
            **extra,
        )
        self.daemon = ClientDaemon(config, Reporter(quiet=True, events_path=self.events_path))
        self.code = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.code = self.daemon.run()
        except Exception as exc:  # surfaced by the test
            self.error = exc

    def events(self, name=None):
        evs = read_events(self.events_path)
        return [e for e in evs if name is None or e["event"] == name]

    def stop(self):
        self.daemon.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error
        assert self.code == 0


@pytest.fixture()
def served(bert_spec):
    records = synthetic_ledger(bert_spec, 12)
    fake = FakeCoordinator(bert_spec, records)
    srv = Served(fake)
    yield fake, srv.target, records
    srv.stop()


@pytest.mark.parametrize(("weighting", "claim"), [("examples", 16), ("equal", 0)])
def test_a_report_claims_its_examples_where_the_task_weighs_by_them(tmp_path, bert_spec, weighting, claim):
    spec = dataclasses.replace(bert_spec, weighting=weighting)
    fake = FakeCoordinator(spec, synthetic_ledger(spec, 1))
    srv = Served(fake)
    run = Running(tmp_path, srv.target, spec)  # its data file holds 16 examples
    try:
        wait_until(lambda: run.events("caught_up"), 60, what=run.events)
        fake.live.put(pb.SyncEvent(open=pb.RoundOpen(round=2, slot=0, seeds=[5], lr=1e-3, deadline_unix=0)))
        wait_until(lambda: fake.submits, 60, "a submission")
        assert fake.submits[0].examples == claim
    finally:
        run.stop()
        srv.stop()


def test_catch_up_then_live_round(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    run = Running(tmp_path, target, bert_spec)
    try:
        wait_until(lambda: run.events("caught_up"), 60, what=run.events)
        cu = run.events("caught_up")[0]
        assert cu["rounds"] == 12 and cu["folded"] and cu["replays"] <= bert_spec.pool_size
        assert cu["digest"] == reference_digest(bert_spec, bert_dir, records)
        # a live round: open -> one byte per seed submitted; commit -> applied and its digest reported
        fake.live.put(pb.SyncEvent(open=pb.RoundOpen(round=13, slot=0, seeds=[5, 6], lr=1e-3, deadline_unix=0)))
        wait_until(lambda: fake.submits, 60, "a submission")
        assert len(fake.submits[0].scalars) == 2 and fake.submits[0].round == 13
        rec13 = make_record(records[-1].hash, 13, {5: 1, 6: -2})
        fake.records.append(rec13)
        fake.live.put(pb.SyncEvent(commit=commit_message(rec13)))
        wait_until(lambda: run.events("round"), 30, "a round event")
        assert run.events("round")[0]["digest"] == reference_digest(bert_spec, bert_dir, records + [rec13])
        assert (13, run.events("round")[0]["digest"]) in fake.heartbeats
    finally:
        run.stop()
    assert fake.left == ["id-c1"]
    assert run.events("stopped")[0]["round"] == 13


def test_tampered_record_is_refused_then_resynced(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    fake.tampered[7] = 1  # the first Sync gets round 7 with a wrong hash
    run = Running(tmp_path, target, bert_spec)
    try:
        wait_until(lambda: run.events("caught_up"), 60, what=run.events)
    finally:
        run.stop()
    refused = run.events("refused")
    assert len(refused) == 1 and "round 7" in refused[0]["reason"]
    assert fake.syncs == [1, 1]  # nothing of the bad session was applied: the resync starts from the base again
    assert run.events("caught_up")[0]["digest"] == reference_digest(bert_spec, bert_dir, records)


def test_digest_mismatch_resyncs(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    fake.deny_digest[12] = 1
    run = Running(tmp_path, target, bert_spec)
    try:
        wait_until(lambda: len(run.events("caught_up")) >= 2, 60, what=run.events)
    finally:
        run.stop()
    assert run.events("digest_mismatch")[0]["round"] == 12
    assert run.events("resync")[0]["to"] == "base"
    assert fake.syncs == [1, 1]
    assert run.events("caught_up")[-1]["digest"] == reference_digest(bert_spec, bert_dir, records)


def test_resume_from_checkpoint_replays_only_missing_rounds(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    cache = tmp_path / "cache"
    first = Running(tmp_path, target, bert_spec, cache=cache, until_round=12)
    first.thread.join(60)
    first.stop()
    more = synthetic_ledger(bert_spec, 5, first=13, previous=records[-1].hash, seed=9)
    fake.records.extend(more)
    second = Running(tmp_path, target, bert_spec, cache=cache, name="c1b", until_round=17)
    second.thread.join(60)
    second.stop()
    assert second.events("resumed")[0] == {**second.events("resumed")[0], "source": "checkpoint", "round": 12}
    cu = second.events("caught_up")[0]
    assert (cu["first_round"], cu["last_round"], cu["rounds"]) == (13, 17, 5)
    assert fake.syncs[-1] == 13
    assert cu["digest"] == reference_digest(bert_spec, bert_dir, records + more)


def test_checkpoint_off_the_chain_falls_back_to_base(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    cache = tmp_path / "cache"
    first = Running(tmp_path, target, bert_spec, cache=cache, until_round=12)
    first.thread.join(60)
    first.stop()
    # the coordinator's history diverged after round 4 (a different database under the same task)
    other = records[:4] + synthetic_ledger(bert_spec, 8, first=5, previous=records[3].hash, seed=42)
    fake.records[:] = other
    second = Running(tmp_path, target, bert_spec, cache=cache, name="c1c", until_round=12)
    second.thread.join(60)
    second.stop()
    assert second.events("resync")[0]["to"] == "base"
    assert second.events("caught_up")[0]["digest"] == reference_digest(bert_spec, bert_dir, other)


def test_digest_disputed_after_a_rebuild_keeps_the_rebuilt_state(tmp_path, bert_spec, bert_dir, served):
    fake, target, records = served
    fake.deny_digest[12] = 5  # the coordinator keeps saying the digest is wrong
    run = Running(tmp_path, target, bert_spec)
    try:
        wait_until(lambda: run.events("digest_disputed"), 60, what=run.events)
    finally:
        run.stop()
    assert len(run.events("resync")) == 1 and fake.syncs == [1, 1]  # one rebuild, then no resync loop
    assert run.events("digest_disputed")[0]["digest"] == reference_digest(bert_spec, bert_dir, records)
