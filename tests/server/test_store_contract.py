"""One contract for every LedgerStore: in memory, SQLite file, PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest
from coord_helpers import make_spec

from seedfed.server.store import (
    DigestReport,
    LedgerStore,
    PendingSubmission,
    StoreConflict,
    SubmitOutcome,
    TaskConflictError,
    WriteBatch,
)
from seedfed.shared.ledger import verify_chain
from seedfed.shared.round_math import compute_commit, plan_round

SPEC = make_spec()


def _setup(store: LedgerStore, n_clients: int = 3) -> list[str]:
    store.register_task(SPEC, 1.0)
    return [store.join_client(SPEC.task_id, f"dev{i}", f"id{i}", 1.0, 100.0).client_id for i in range(n_clients)]


def _open(store: LedgerStore, clients: list[str], round_no: int = 1, attempt: int = 1):  # noqa: ANN202
    plan = plan_round(SPEC, round_no, attempt, clients, {}, opened_at=10.0)
    store.open_round(plan)
    return plan


def _sub(plan, client_id: str, fill: int = 1, slot: int | None = None) -> PendingSubmission:  # noqa: ANN001
    slot = plan.slot_of()[client_id] if slot is None else slot
    return PendingSubmission(
        SPEC.task_id, plan.round, plan.attempt, client_id, slot, bytes([fill]) * SPEC.local_steps, 0.25, 11.0
    )


def _commit(store: LedgerStore, plan):  # noqa: ANN001, ANN202
    o = store.get_open_round(SPEC.task_id)
    _, head_hash = store.head(SPEC.task_id)
    result = compute_commit(SPEC, o.plan, list(o.submissions.values()), head_hash)
    store.commit_round(SPEC.task_id, plan.round, plan.attempt, result, 12.0)
    return result


def test_tasks_register_idempotently_and_refuse_a_different_genesis(store: LedgerStore) -> None:
    assert store.register_task(SPEC, 1.0) is True
    assert store.register_task(SPEC, 2.0) is False
    with pytest.raises(TaskConflictError):
        store.register_task(dataclasses.replace(SPEC, lr=0.5), 3.0)
    assert store.get_task(SPEC.task_id) == SPEC
    assert store.get_task("nope") is None
    other = make_spec(task_id="t0")
    store.register_task(other, 1.0)
    assert [s.task_id for s in store.list_tasks()] == ["t0", "t1"]
    assert store.head(SPEC.task_id) == (0, SPEC.genesis_hash())


def test_clients_keep_identity_and_join_order(store: LedgerStore) -> None:
    ids = _setup(store)
    again = store.join_client(SPEC.task_id, "dev1", "other-id", 5.0, 200.0)
    assert again.client_id == ids[1] and again.lease_until == 200.0
    clients = store.get_clients(SPEC.task_id)
    assert [c.client_id for c in clients] == ids
    assert [c.seq for c in clients] == sorted(c.seq for c in clients)
    assert store.leave_client(SPEC.task_id, ids[0], 6.0) is True
    assert store.get_clients(SPEC.task_id)[0].lease_until == 0.0
    assert store.leave_client(SPEC.task_id, "ghost", 6.0) is False


def test_open_round_checks_the_state_it_extends(store: LedgerStore) -> None:
    ids = _setup(store)
    with pytest.raises(StoreConflict):
        store.open_round(plan_round(SPEC, 2, 1, ids, {}, 10.0))  # not head + 1
    with pytest.raises(StoreConflict):
        store.open_round(plan_round(SPEC, 1, 2, ids, {}, 10.0))  # attempt 1 comes first
    with pytest.raises(StoreConflict):
        store.open_round(plan_round(SPEC, 1, 1, ids + ["ghost"], {}, 10.0))
    assert store.get_open_round(SPEC.task_id) is None
    plan = _open(store, ids)
    with pytest.raises(StoreConflict):
        _open(store, ids, attempt=2)  # one open attempt at a time
    got = store.get_open_round(SPEC.task_id)
    assert got is not None and got.plan == plan and got.submissions == {}
    assert store.last_attempt(SPEC.task_id, 1) == 1


def test_submissions_are_idempotent_and_never_counted_twice(store: LedgerStore) -> None:
    ids = _setup(store)
    plan = _open(store, ids)
    out = store.write_batch(
        WriteBatch(submissions=[_sub(plan, ids[0]), _sub(plan, ids[0]), _sub(plan, ids[0], fill=2), _sub(plan, ids[1])])
    )
    assert out == [SubmitOutcome.ACCEPTED, SubmitOutcome.IDENTICAL, SubmitOutcome.DUPLICATE, SubmitOutcome.ACCEPTED]
    assert store.write_batch(WriteBatch(submissions=[_sub(plan, ids[0])])) == [SubmitOutcome.IDENTICAL]
    assert store.write_batch(WriteBatch(submissions=[_sub(plan, ids[1], fill=9)])) == [SubmitOutcome.DUPLICATE]
    wrong_attempt = dataclasses.replace(_sub(plan, ids[2]), attempt=2)
    assert store.write_batch(WriteBatch(submissions=[wrong_attempt])) == [SubmitOutcome.LATE]
    o = store.get_open_round(SPEC.task_id)
    assert set(o.submissions) == {ids[0], ids[1]}
    assert o.submissions[ids[0]].scalars == bytes([1]) * SPEC.local_steps


def test_commit_extends_the_chain_and_later_submissions_are_late(store: LedgerStore) -> None:
    ids = _setup(store)
    plan = _open(store, ids)
    store.write_batch(WriteBatch(submissions=[_sub(plan, ids[0], 5), _sub(plan, ids[1], 7)]))
    _commit(store, plan)
    head, head_hash = store.head(SPEC.task_id)
    assert head == 1
    assert store.get_open_round(SPEC.task_id) is None
    assert store.write_batch(WriteBatch(submissions=[_sub(plan, ids[2])])) == [SubmitOutcome.LATE]
    recs = store.get_rounds(SPEC.task_id, 1)
    assert verify_chain(SPEC.genesis_hash(), recs) == head_hash
    plan2, subs = store.committed_submissions(SPEC.task_id, 1)
    assert plan2 == plan and [s.client_id for s in subs] == [ids[0], ids[1]]
    stats = store.seed_stats(SPEC.task_id)
    assert sum(n for _, n in stats.values()) == SPEC.local_steps
    summary = store.summary(SPEC.task_id)
    assert summary.head_round == 1 and summary.last_loss == pytest.approx(0.25) and summary.ledger_bytes > 0


def test_refused_commits_change_nothing(store: LedgerStore) -> None:
    ids = _setup(store)
    plan = _open(store, ids)
    store.write_batch(WriteBatch(submissions=[_sub(plan, ids[0], 3)]))
    o = store.get_open_round(SPEC.task_id)
    good = compute_commit(SPEC, o.plan, list(o.submissions.values()), SPEC.genesis_hash())
    undercount = dataclasses.replace(good, submissions_counted=0)
    with pytest.raises(StoreConflict):
        store.commit_round(SPEC.task_id, 1, 1, undercount, 12.0)
    wrong_prev = compute_commit(SPEC, o.plan, list(o.submissions.values()), b"\0" * 32)
    with pytest.raises(StoreConflict):
        store.commit_round(SPEC.task_id, 1, 1, wrong_prev, 12.0)
    with pytest.raises(StoreConflict):
        store.commit_round(SPEC.task_id, 1, 2, good, 12.0)
    assert store.head(SPEC.task_id) == (0, SPEC.genesis_hash())
    assert store.get_rounds(SPEC.task_id, 1) == []
    assert store.seed_stats(SPEC.task_id) == {}
    store.commit_round(SPEC.task_id, 1, 1, good, 12.0)
    with pytest.raises(StoreConflict):
        store.commit_round(SPEC.task_id, 1, 1, good, 13.0)  # a second commit of the same round
    assert store.get_rounds(SPEC.task_id, 1) == [good.record]


def test_abandoned_attempt_reopens_under_the_same_round_number(store: LedgerStore) -> None:
    ids = _setup(store)
    plan = _open(store, ids)
    store.write_batch(WriteBatch(submissions=[_sub(plan, ids[0])]))
    store.abandon_round(SPEC.task_id, 1, 1, 20.0)
    with pytest.raises(StoreConflict):
        store.abandon_round(SPEC.task_id, 1, 1, 21.0)
    assert store.get_open_round(SPEC.task_id) is None
    assert store.write_batch(WriteBatch(submissions=[_sub(plan, ids[1])])) == [SubmitOutcome.LATE]
    plan2 = _open(store, ids[1:], attempt=2)
    assert store.get_open_round(SPEC.task_id).submissions == {}
    store.write_batch(WriteBatch(submissions=[_sub(plan2, ids[1])]))
    _commit(store, plan2)
    _, subs = store.committed_submissions(SPEC.task_id, 1)
    assert [s.client_id for s in subs] == [ids[1]]
    attempts = [(a.round, a.attempt, a.status, a.submissions) for a in store.round_attempts(SPEC.task_id)]
    assert attempts == [(1, 1, "abandoned", 1), (1, 2, "committed", 1)]
    assert store.summary(SPEC.task_id).abandoned_attempts == 1
    _open(store, ids, round_no=2)  # the next round number follows the committed one


def test_leases_and_digest_reports_ride_in_batches(store: LedgerStore) -> None:
    ids = _setup(store)
    batch = WriteBatch(
        leases={(SPEC.task_id, ids[0]): (500.0, 400.0)},
        digests=[DigestReport(SPEC.task_id, ids[0], 1, "aa" * 32, 3.0), DigestReport(SPEC.task_id, ids[1], 1, "bb" * 32, 3.0)],
    )
    assert store.write_batch(batch) == []
    c0 = store.get_clients(SPEC.task_id)[0]
    assert (c0.lease_until, c0.last_seen, c0.last_digest_round, c0.last_digest) == (500.0, 400.0, 1, "aa" * 32)
    store.write_batch(
        WriteBatch(
            digests=[DigestReport(SPEC.task_id, ids[0], 1, "bb" * 32, 4.0), DigestReport(SPEC.task_id, ids[0], 2, "cc" * 32, 4.0)]
        )
    )
    assert store.digest_reports(SPEC.task_id, 1) == {ids[0]: "bb" * 32, ids[1]: "bb" * 32}
    assert store.digest_rounds(SPEC.task_id, 10) == [2, 1]


def test_many_rounds_read_back_in_ranges(store: LedgerStore) -> None:
    ids = _setup(store, 2)
    stats: dict[int, tuple[float, int]] = {}
    for r in range(1, 8):
        plan = _open(store, ids, round_no=r)
        store.write_batch(WriteBatch(submissions=[_sub(plan, cid, fill=r + i) for i, cid in enumerate(ids)]))
        for seed, (a, n) in _commit(store, plan).seed_abs.items():
            stats[seed] = (stats.get(seed, (0.0, 0))[0] + a, stats.get(seed, (0.0, 0))[1] + n)
    assert store.seed_stats(SPEC.task_id) == stats  # the same additions in the same order: exact
    recs = store.get_rounds(SPEC.task_id, 1)
    assert [r.round for r in recs] == list(range(1, 8))
    assert store.head(SPEC.task_id) == (7, verify_chain(SPEC.genesis_hash(), recs))
    assert store.get_rounds(SPEC.task_id, 3, 5) == recs[2:5]
    assert store.get_rounds(SPEC.task_id, 8) == []


def test_committed_losses_read_back_exactly_in_round_order(store: LedgerStore) -> None:
    ids = _setup(store, 2)
    want = []
    for r in range(1, 5):
        plan = _open(store, ids, round_no=r)
        if r == 2:  # an abandoned attempt's losses are not the round's
            store.write_batch(WriteBatch(submissions=[dataclasses.replace(_sub(plan, ids[0]), loss=9.0)]))
            store.abandon_round(SPEC.task_id, r, 1, 11.0)
            plan = _open(store, ids, round_no=r, attempt=2)
        subs = [dataclasses.replace(_sub(plan, cid), loss=r / 3 + i / 7) for i, cid in enumerate(ids)]
        if r == 3:
            subs[0] = dataclasses.replace(subs[0], loss=None)
        store.write_batch(WriteBatch(submissions=subs))
        _commit(store, plan)
        want.append([s.loss for s in sorted(subs, key=lambda s: s.slot)])
    assert store.committed_losses(SPEC.task_id) == want  # bit for bit: the loss guard is rebuilt from them


def test_joins_in_one_batch(store: LedgerStore) -> None:
    from seedfed.server.store import PendingJoin

    store.register_task(SPEC, 1.0)
    got = store.join_clients([PendingJoin(SPEC.task_id, n, f"id-{i}", 2.0, 50.0) for i, n in enumerate(["p", "q", "p"])])
    assert [c.client_id for c in got] == ["id-0", "id-1", "id-0"]
    assert [c.name for c in store.get_clients(SPEC.task_id)] == ["p", "q"]


def test_import_a_verified_history(store: LedgerStore) -> None:
    from seedfed.shared.ledger import make_record

    history, prev = [], SPEC.genesis_hash()
    for r in range(1, 5):
        history.append(make_record(prev, r, {r: r * 10, 40 + r: -r}))
        prev = history[-1].hash
    assert store.import_rounds(SPEC, history[:3], 5.0) == 3
    assert store.import_rounds(SPEC, history[:2], 5.0) == 0  # a prefix of what is stored: nothing to add
    assert store.import_rounds(SPEC, history, 5.0) == 1
    assert store.get_rounds(SPEC.task_id, 1) == history
    assert store.committed_losses(SPEC.task_id) == [[]] * 4  # imported rounds carry no submissions
    tampered = list(history)
    tampered[1] = dataclasses.replace(tampered[1], hash=b"\0" * 32)
    with pytest.raises(StoreConflict):
        store.import_rounds(SPEC, tampered, 6.0)
    with pytest.raises(TaskConflictError):
        store.import_rounds(dataclasses.replace(SPEC, lr=0.5), history, 6.0)
    assert store.head(SPEC.task_id) == (4, history[-1].hash)
    ids = [store.join_client(SPEC.task_id, "dev", "id0", 1.0, 100.0).client_id]
    _open(store, ids, round_no=5)  # a coordinator continues the imported run
    with pytest.raises(StoreConflict):
        store.import_rounds(SPEC, history, 7.0)  # not while an attempt is open
