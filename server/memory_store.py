"""LedgerStore in process memory (``--db memory://``): for throwaway runs, gone at exit.

One lock serialises every method; each method checks before it mutates, so a
refused transition leaves nothing behind, as in SQL.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from seedfed.server.models import ROUND_ABANDONED, ROUND_COMMITTED, ROUND_OPEN
from seedfed.server.store import (
    Client,
    CommitResult,
    LedgerStore,
    OpenRound,
    PendingJoin,
    RoundAttempt,
    RoundPlan,
    StoreConflict,
    Submission,
    SubmitOutcome,
    TaskConflictError,
    TaskSummary,
    UnknownTask,
    WriteBatch,
    canonical_spec,
    check_import,
)
from seedfed.shared.ledger import RoundRecord, round_payload, verify_record
from seedfed.shared.taskspec import TaskSpec


@dataclass
class _Attempt:
    plan: RoundPlan
    status: str = ROUND_OPEN
    closed_at: float | None = None
    submissions: dict[str, Submission] = field(default_factory=dict)
    record: RoundRecord | None = None
    mean_loss: float | None = None


@dataclass
class _Task:
    spec: TaskSpec
    clients: dict[str, Client] = field(default_factory=dict)  # by client_id, insertion = join order
    attempts: list[_Attempt] = field(default_factory=list)
    committed: list[_Attempt] = field(default_factory=list)  # index r-1 is round r
    seed_stats: dict[int, tuple[float, int]] = field(default_factory=dict)
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    ledger_bytes: int = 0


class MemoryStore(LedgerStore):
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tasks: dict[str, _Task] = {}
        self._next_seq = 1

    def _task(self, task_id: str) -> _Task:
        t = self._tasks.get(task_id)
        if t is None:
            raise UnknownTask(f"unknown task {task_id!r}")
        return t

    # -- tasks
    def register_task(self, spec: TaskSpec, now: float) -> bool:
        spec = canonical_spec(spec)
        with self._lock:
            t = self._tasks.get(spec.task_id)
            if t is not None:
                if t.spec.canonical_bytes() != spec.canonical_bytes():
                    raise TaskConflictError(f"task {spec.task_id!r} exists with a different genesis")
                return False
            self._tasks[spec.task_id] = _Task(spec)
            return True

    def get_task(self, task_id: str) -> TaskSpec | None:
        with self._lock:
            t = self._tasks.get(task_id)
            return t.spec if t else None

    def list_tasks(self) -> list[TaskSpec]:
        with self._lock:
            return [t.spec for _, t in sorted(self._tasks.items())]

    # -- clients
    def join_clients(self, joins: Sequence[PendingJoin]) -> list[Client]:
        with self._lock:
            for j in joins:
                self._task(j.task_id)  # all or nothing
            return [self._join(j) for j in joins]

    def _join(self, j: PendingJoin) -> Client:
        t = self._task(j.task_id)
        for c in t.clients.values():
            if c.name == j.name:
                c = dataclasses.replace(c, lease_until=j.lease_until, last_seen=j.now)
                t.clients[c.client_id] = c
                return c
        c = Client(self._next_seq, j.new_client_id, j.task_id, j.name, j.lease_until, j.now)
        self._next_seq += 1
        t.clients[j.new_client_id] = c
        return c

    def leave_client(self, task_id: str, client_id: str, now: float) -> bool:
        with self._lock:
            t = self._task(task_id)
            c = t.clients.get(client_id)
            if c is None:
                return False
            t.clients[client_id] = dataclasses.replace(c, lease_until=0.0, last_seen=now)
            return True

    def get_clients(self, task_id: str) -> list[Client]:
        with self._lock:
            return sorted(self._task(task_id).clients.values(), key=lambda c: c.seq)

    # -- rounds
    def head(self, task_id: str) -> tuple[int, bytes]:
        with self._lock:
            t = self._task(task_id)
            if not t.committed:
                return 0, t.spec.genesis_hash()
            rec = t.committed[-1].record
            assert rec is not None
            return rec.round, rec.hash

    def last_attempt(self, task_id: str, round_no: int) -> int:
        with self._lock:
            return max((a.plan.attempt for a in self._task(task_id).attempts if a.plan.round == round_no), default=0)

    def _open(self, t: _Task) -> _Attempt | None:
        return next((a for a in reversed(t.attempts) if a.status == ROUND_OPEN), None)

    def open_round(self, plan: RoundPlan) -> None:
        with self._lock:
            t = self._task(plan.task_id)
            if self._open(t) is not None:
                raise StoreConflict(f"task {plan.task_id}: an attempt is already open")
            head, _ = self.head(plan.task_id)
            if plan.round != head + 1:
                raise StoreConflict(f"round {plan.round} does not follow the head {head}")
            if plan.attempt != self.last_attempt(plan.task_id, plan.round) + 1:
                raise StoreConflict(f"attempt {plan.attempt} of round {plan.round} is not the next one")
            if len(set(plan.slots)) != len(plan.slots) or any(cid not in t.clients for cid in plan.slots):
                raise StoreConflict("assignments name unknown or repeated clients")
            t.attempts.append(_Attempt(plan))

    def get_open_round(self, task_id: str) -> OpenRound | None:
        with self._lock:
            a = self._open(self._task(task_id))
            return None if a is None else OpenRound(a.plan, dict(a.submissions))

    def write_batch(self, batch: WriteBatch) -> list[SubmitOutcome]:
        with self._lock:
            for (task_id, client_id), (lease_until, last_seen) in batch.leases.items():
                t = self._tasks.get(task_id)
                c = t.clients.get(client_id) if t else None
                if c is not None:
                    t.clients[client_id] = dataclasses.replace(c, lease_until=lease_until, last_seen=last_seen)
            for d in batch.digests:
                t = self._tasks.get(d.task_id)
                if t is None or d.client_id not in t.clients:
                    continue
                t.digests.setdefault(d.round, {})[d.client_id] = d.digest
                t.clients[d.client_id] = dataclasses.replace(
                    t.clients[d.client_id], last_digest_round=d.round, last_digest=d.digest
                )
            out = []
            for s in batch.submissions:
                t = self._tasks.get(s.task_id)
                a = self._open(t) if t else None
                if a is None or a.plan.round != s.round or a.plan.attempt != s.attempt:
                    out.append(SubmitOutcome.LATE)
                    continue
                have = a.submissions.get(s.client_id)
                if have is not None:
                    same = have.slot == s.slot and have.scalars == s.scalars
                    out.append(SubmitOutcome.IDENTICAL if same else SubmitOutcome.DUPLICATE)
                    continue
                a.submissions[s.client_id] = Submission(s.client_id, s.slot, s.scalars, s.loss, s.received_at, s.examples)
                out.append(SubmitOutcome.ACCEPTED)
            return out

    def _attempt(self, t: _Task, round_no: int, attempt: int) -> _Attempt:
        a = self._open(t)
        if a is None or a.plan.round != round_no or a.plan.attempt != attempt:
            raise StoreConflict(f"round {round_no} attempt {attempt} is not open")
        return a

    def commit_round(self, task_id: str, round_no: int, attempt: int, result: CommitResult, now: float) -> None:
        with self._lock:
            t = self._task(task_id)
            a = self._attempt(t, round_no, attempt)
            head, head_hash = self.head(task_id)
            rec = result.record
            if rec.round != round_no or round_no != head + 1:
                raise StoreConflict(f"round {rec.round} does not extend the head {head}")
            try:
                verify_record(head_hash, rec, round_no)
            except ValueError as exc:
                raise StoreConflict(str(exc)) from None
            if result.submissions_counted != len(a.submissions):
                raise StoreConflict(f"commit counts {result.submissions_counted} submissions, {len(a.submissions)} are stored")
            a.status, a.closed_at, a.record, a.mean_loss = ROUND_COMMITTED, now, rec, result.mean_loss
            t.committed.append(a)
            t.ledger_bytes += len(round_payload(rec.round, rec.entries))
            for seed, (s, n) in result.seed_abs.items():
                old = t.seed_stats.get(seed, (0.0, 0))
                t.seed_stats[seed] = (old[0] + s, old[1] + n)

    def abandon_round(self, task_id: str, round_no: int, attempt: int, now: float) -> None:
        with self._lock:
            a = self._attempt(self._task(task_id), round_no, attempt)
            a.status, a.closed_at = ROUND_ABANDONED, now

    def get_rounds(self, task_id: str, first: int, last: int | None = None) -> list[RoundRecord]:
        with self._lock:
            t = self._task(task_id)
            first = max(first, 1)
            last = len(t.committed) if last is None else min(last, len(t.committed))
            return [t.committed[r - 1].record for r in range(first, last + 1)]  # type: ignore[misc]

    def committed_losses(self, task_id: str) -> list[list[float | None]]:
        with self._lock:
            return [[s.loss for s in sorted(a.submissions.values(), key=lambda s: s.slot)] for a in self._task(task_id).committed]

    def round_attempts(self, task_id: str) -> list[RoundAttempt]:
        with self._lock:
            return [
                RoundAttempt(a.plan.round, a.plan.attempt, a.status, a.plan.opened_at, a.closed_at, len(a.submissions))
                for a in self._task(task_id).attempts
            ]

    def committed_submissions(self, task_id: str, round_no: int) -> tuple[RoundPlan, list[Submission]] | None:
        with self._lock:
            t = self._task(task_id)
            if not 1 <= round_no <= len(t.committed):
                return None
            a = t.committed[round_no - 1]
            return a.plan, sorted(a.submissions.values(), key=lambda s: s.slot)

    def seed_stats(self, task_id: str) -> dict[int, tuple[float, int]]:
        with self._lock:
            return dict(self._task(task_id).seed_stats)

    def import_rounds(self, spec: TaskSpec, records: Sequence[RoundRecord], now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            spec = canonical_spec(spec)
            t = self._tasks.get(spec.task_id)
            if t is not None and t.spec.canonical_bytes() != spec.canonical_bytes():
                raise TaskConflictError(f"task {spec.task_id!r} exists with a different genesis")
            if t is not None and self._open(t) is not None:
                raise StoreConflict(f"task {spec.task_id}: an attempt is open; stop the coordinator first")
            stored = [a.record for a in t.committed] if t else []
            new = check_import(spec, records, stored)  # type: ignore[arg-type]
            if t is None:
                t = self._tasks[spec.task_id] = _Task(spec)
            for rec in new:
                plan = RoundPlan(
                    spec.task_id,
                    rec.round,
                    self.last_attempt(spec.task_id, rec.round) + 1,
                    now,
                    now,
                    spec.lr_at(rec.round),
                    spec.group_size,
                    (),
                    (),
                    spec.scalar_scale,
                )
                a = _Attempt(plan, ROUND_COMMITTED, now, {}, rec, None)
                t.attempts.append(a)
                t.committed.append(a)
                t.ledger_bytes += len(round_payload(rec.round, rec.entries))
            return len(new)

    def digest_reports(self, task_id: str, round_no: int) -> dict[str, str]:
        with self._lock:
            return dict(self._task(task_id).digests.get(round_no, {}))

    def digest_rounds(self, task_id: str, limit: int) -> list[int]:
        with self._lock:
            return sorted(self._task(task_id).digests, reverse=True)[:limit]

    def summary(self, task_id: str) -> TaskSummary:
        with self._lock:
            t = self._task(task_id)
            head, head_hash = self.head(task_id)
            abandoned = Counter(a.status for a in t.attempts)[ROUND_ABANDONED]
            last_loss = t.committed[-1].mean_loss if t.committed else None
            return TaskSummary(task_id, head, head_hash, len(t.clients), abandoned, t.ledger_bytes, last_loss)
