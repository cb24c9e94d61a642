"""LedgerStore over SQLAlchemy: SQLite (embedded default) and PostgreSQL.

Each public method runs in exactly one transaction (``with self._tx() as s``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from seedfed.server.models import (
    ROUND_ABANDONED,
    ROUND_COMMITTED,
    ROUND_OPEN,
    AssignmentRow,
    ClientRow,
    DigestReportRow,
    LedgerEntryRow,
    RoundRow,
    SeedStatRow,
    SubmissionRow,
    TaskRow,
)
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
from seedfed.shared.ledger import LedgerError, RoundRecord, round_payload, verify_record
from seedfed.shared.taskspec import TaskSpec


def _client(row: ClientRow) -> Client:
    return Client(
        row.id, row.client_id, row.task_id, row.name, row.lease_until, row.last_seen, row.last_digest_round, row.last_digest
    )


class SqlStore(LedgerStore):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # -- helpers
    @staticmethod
    def _task_row(s: Session, task_id: str) -> TaskRow:
        row = s.get(TaskRow, task_id)
        if row is None:
            raise UnknownTask(f"unknown task {task_id!r}")
        return row

    @staticmethod
    def _head(s: Session, task_id: str) -> tuple[int, bytes]:
        row = s.execute(
            select(RoundRow.round, RoundRow.hash)
            .where(RoundRow.task_id == task_id, RoundRow.status == ROUND_COMMITTED)
            .order_by(RoundRow.round.desc())
            .limit(1)
        ).first()
        if row is not None:
            return int(row.round), bytes(row.hash)
        return 0, bytes(SqlStore._task_row(s, task_id).genesis_hash)

    @staticmethod
    def _open_row(s: Session, task_id: str) -> RoundRow | None:
        return s.execute(select(RoundRow).where(RoundRow.task_id == task_id, RoundRow.status == ROUND_OPEN)).scalar_one_or_none()

    @staticmethod
    def _plan(s: Session, row: RoundRow) -> RoundPlan:
        slots = s.execute(
            select(AssignmentRow.slot, AssignmentRow.client_id)
            .where(AssignmentRow.round_id == row.id)
            .order_by(AssignmentRow.slot)
        ).all()
        return RoundPlan(
            row.task_id,
            int(row.round),
            row.attempt,
            row.opened_at,
            row.deadline,
            row.lr,
            row.group_size,
            RoundPlan.parse_group_seeds(row.group_seeds),
            tuple(cid for _, cid in slots),
            row.scalar_scale,
        )

    @staticmethod
    def _submissions(s: Session, round_id: int) -> list[Submission]:
        rows = s.execute(select(SubmissionRow).where(SubmissionRow.round_id == round_id).order_by(SubmissionRow.slot)).scalars()
        return [Submission(r.client_id, r.slot, bytes(r.scalars), r.loss, r.received_at, r.examples) for r in rows]

    # -- tasks
    def register_task(self, spec: TaskSpec, now: float) -> bool:
        spec = canonical_spec(spec)
        with self._tx() as s:
            row = s.get(TaskRow, spec.task_id)
            if row is not None:
                if bytes(row.genesis) != spec.canonical_bytes():
                    raise TaskConflictError(f"task {spec.task_id!r} exists with a different genesis")
                return False
            s.add(TaskRow(task_id=spec.task_id, genesis=spec.canonical_bytes(), genesis_hash=spec.genesis_hash(), created_at=now))
            return True

    def get_task(self, task_id: str) -> TaskSpec | None:
        with self._tx() as s:
            row = s.get(TaskRow, task_id)
            return None if row is None else TaskSpec.from_canonical(bytes(row.genesis))

    def list_tasks(self) -> list[TaskSpec]:
        with self._tx() as s:
            return [
                TaskSpec.from_canonical(bytes(g)) for g in s.execute(select(TaskRow.genesis).order_by(TaskRow.task_id)).scalars()
            ]

    # -- clients
    def join_clients(self, joins: Sequence[PendingJoin]) -> list[Client]:
        with self._tx() as s:
            out = []
            for j in joins:
                self._task_row(s, j.task_id)
                row = s.execute(
                    select(ClientRow).where(ClientRow.task_id == j.task_id, ClientRow.name == j.name)
                ).scalar_one_or_none()
                if row is None:
                    row = ClientRow(
                        task_id=j.task_id,
                        client_id=j.new_client_id,
                        name=j.name,
                        joined_at=j.now,
                        lease_until=j.lease_until,
                        last_seen=j.now,
                    )
                    s.add(row)
                    s.flush()
                else:
                    row.lease_until, row.last_seen = j.lease_until, j.now
                out.append(_client(row))
            return out

    def leave_client(self, task_id: str, client_id: str, now: float) -> bool:
        with self._tx() as s:
            res = s.execute(
                update(ClientRow)
                .where(ClientRow.task_id == task_id, ClientRow.client_id == client_id)
                .values(lease_until=0.0, last_seen=now)
            )
            return res.rowcount > 0

    def get_clients(self, task_id: str) -> list[Client]:
        with self._tx() as s:
            self._task_row(s, task_id)
            return [
                _client(r)
                for r in s.execute(select(ClientRow).where(ClientRow.task_id == task_id).order_by(ClientRow.id)).scalars()
            ]

    # -- rounds
    def head(self, task_id: str) -> tuple[int, bytes]:
        with self._tx() as s:
            return self._head(s, task_id)

    def last_attempt(self, task_id: str, round_no: int) -> int:
        with self._tx() as s:
            return int(
                s.execute(
                    select(func.coalesce(func.max(RoundRow.attempt), 0)).where(
                        RoundRow.task_id == task_id, RoundRow.round == round_no
                    )
                ).scalar_one()
            )

    def open_round(self, plan: RoundPlan) -> None:
        with self._tx() as s:
            head, _ = self._head(s, plan.task_id)
            if self._open_row(s, plan.task_id) is not None:
                raise StoreConflict(f"task {plan.task_id}: an attempt is already open")
            if plan.round != head + 1:
                raise StoreConflict(f"round {plan.round} does not follow the head {head}")
            last = s.execute(
                select(func.coalesce(func.max(RoundRow.attempt), 0)).where(
                    RoundRow.task_id == plan.task_id, RoundRow.round == plan.round
                )
            ).scalar_one()
            if plan.attempt != last + 1:
                raise StoreConflict(f"attempt {plan.attempt} of round {plan.round} is not the next one")
            if len(set(plan.slots)) != len(plan.slots):
                raise StoreConflict("assignments repeat a client")
            if plan.slots:
                known = s.execute(
                    select(func.count())
                    .select_from(ClientRow)
                    .where(ClientRow.task_id == plan.task_id, ClientRow.client_id.in_(plan.slots))
                ).scalar_one()
                if known != len(plan.slots):
                    raise StoreConflict("assignments name unknown clients")
            row = RoundRow(
                task_id=plan.task_id,
                round=plan.round,
                attempt=plan.attempt,
                status=ROUND_OPEN,
                opened_at=plan.opened_at,
                deadline=plan.deadline,
                lr=plan.lr,
                scalar_scale=plan.scalar_scale,
                group_size=plan.group_size,
                group_seeds=plan.group_seeds_json(),
            )
            s.add(row)
            s.flush()
            if plan.slots:
                s.execute(
                    insert(AssignmentRow), [{"round_id": row.id, "client_id": cid, "slot": i} for i, cid in enumerate(plan.slots)]
                )

    def get_open_round(self, task_id: str) -> OpenRound | None:
        with self._tx() as s:
            row = self._open_row(s, task_id)
            if row is None:
                return None
            return OpenRound(self._plan(s, row), {sub.client_id: sub for sub in self._submissions(s, row.id)})

    def write_batch(self, batch: WriteBatch) -> list[SubmitOutcome]:
        with self._tx() as s:
            if batch.leases:
                s.connection().execute(
                    update(ClientRow.__table__)
                    .where(ClientRow.__table__.c.task_id == bindparam("t"), ClientRow.__table__.c.client_id == bindparam("c"))
                    .values(lease_until=bindparam("lu"), last_seen=bindparam("ls")),
                    [{"t": t, "c": c, "lu": lu, "ls": ls} for (t, c), (lu, ls) in batch.leases.items()],
                )
            for d in batch.digests:
                s.execute(
                    delete(DigestReportRow).where(
                        DigestReportRow.task_id == d.task_id,
                        DigestReportRow.client_id == d.client_id,
                        DigestReportRow.round == d.round,
                    )
                )
                s.execute(
                    insert(DigestReportRow).values(
                        task_id=d.task_id, client_id=d.client_id, round=d.round, digest=d.digest, reported_at=d.reported_at
                    )
                )
                s.execute(
                    update(ClientRow)
                    .where(ClientRow.client_id == d.client_id)
                    .values(last_digest_round=d.round, last_digest=d.digest)
                )
            return self._write_submissions(s, batch)

    def _write_submissions(self, s: Session, batch: WriteBatch) -> list[SubmitOutcome]:
        if not batch.submissions:
            return []
        open_rows: dict[str, RoundRow | None] = {}
        existing: dict[int, dict[str, tuple[int, bytes]]] = {}
        outcomes: list[SubmitOutcome] = []
        rows = []
        for sub in batch.submissions:
            if sub.task_id not in open_rows:
                open_rows[sub.task_id] = self._open_row(s, sub.task_id)
            row = open_rows[sub.task_id]
            if row is None or row.round != sub.round or row.attempt != sub.attempt:
                outcomes.append(SubmitOutcome.LATE)
                continue
            if row.id not in existing:
                clients = list({p.client_id for p in batch.submissions if p.task_id == sub.task_id})
                existing[row.id] = {
                    cid: (slot, bytes(sc))
                    for cid, slot, sc in s.execute(
                        select(SubmissionRow.client_id, SubmissionRow.slot, SubmissionRow.scalars).where(
                            SubmissionRow.round_id == row.id, SubmissionRow.client_id.in_(clients)
                        )
                    )
                }
            have = existing[row.id].get(sub.client_id)
            if have is not None:
                outcomes.append(SubmitOutcome.IDENTICAL if have == (sub.slot, sub.scalars) else SubmitOutcome.DUPLICATE)
                continue
            existing[row.id][sub.client_id] = (sub.slot, sub.scalars)
            rows.append(
                {
                    "round_id": row.id,
                    "task_id": sub.task_id,
                    "round": sub.round,
                    "client_id": sub.client_id,
                    "slot": sub.slot,
                    "scalars": sub.scalars,
                    "loss": sub.loss,
                    "received_at": sub.received_at,
                    "examples": sub.examples,
                }
            )
            outcomes.append(SubmitOutcome.ACCEPTED)
        if rows:
            s.execute(insert(SubmissionRow), rows)
        return outcomes

    def _attempt_row(self, s: Session, task_id: str, round_no: int, attempt: int) -> RoundRow:
        row = self._open_row(s, task_id)
        if row is None or row.round != round_no or row.attempt != attempt:
            raise StoreConflict(f"round {round_no} attempt {attempt} is not open")
        return row

    def commit_round(self, task_id: str, round_no: int, attempt: int, result: CommitResult, now: float) -> None:
        rec = result.record
        with self._tx() as s:
            row = self._attempt_row(s, task_id, round_no, attempt)
            head, head_hash = self._head(s, task_id)
            if rec.round != round_no or round_no != head + 1:
                raise StoreConflict(f"round {rec.round} does not extend the head {head}")
            try:
                verify_record(head_hash, rec, round_no)
            except LedgerError as exc:
                raise StoreConflict(str(exc)) from None
            stored = s.execute(
                select(func.count()).select_from(SubmissionRow).where(SubmissionRow.round_id == row.id)
            ).scalar_one()
            if stored != result.submissions_counted:
                raise StoreConflict(f"commit counts {result.submissions_counted} submissions, {stored} are stored")
            row.status, row.closed_at, row.hash = ROUND_COMMITTED, now, rec.hash
            row.payload = round_payload(rec.round, rec.entries)
            row.submissions_counted, row.mean_loss = result.submissions_counted, result.mean_loss
            if rec.seeds:
                s.execute(
                    insert(LedgerEntryRow),
                    [{"task_id": task_id, "round": round_no, "seed": sd, "step": q} for sd, q in zip(rec.seeds, rec.steps)],
                )
            self._add_seed_stats(s, task_id, result.seed_abs)

    @staticmethod
    def _add_seed_stats(s: Session, task_id: str, seed_abs: dict[int, tuple[float, int]]) -> None:
        """One upsert statement for every seed of the round (both dialects speak ON CONFLICT)."""
        if not seed_abs:
            return
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        stmt = upsert(SeedStatRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=[SeedStatRow.task_id, SeedStatRow.seed],
            set_={"sum_abs": SeedStatRow.sum_abs + stmt.excluded.sum_abs, "count": SeedStatRow.count + stmt.excluded.count},
        )
        s.execute(stmt, [{"task_id": task_id, "seed": sd, "sum_abs": a, "count": n} for sd, (a, n) in sorted(seed_abs.items())])

    def abandon_round(self, task_id: str, round_no: int, attempt: int, now: float) -> None:
        with self._tx() as s:
            row = self._attempt_row(s, task_id, round_no, attempt)
            row.status, row.closed_at = ROUND_ABANDONED, now

    def get_rounds(self, task_id: str, first: int, last: int | None = None) -> list[RoundRecord]:
        with self._tx() as s:
            self._task_row(s, task_id)
            return self._records(s, task_id, first, last)

    def committed_losses(self, task_id: str) -> list[list[float | None]]:
        with self._tx() as s:
            self._task_row(s, task_id)
            committed = (RoundRow.task_id == task_id, RoundRow.status == ROUND_COMMITTED)
            round_ids = s.scalars(select(RoundRow.id).where(*committed).order_by(RoundRow.round)).all()
            reported = s.execute(
                select(SubmissionRow.round_id, SubmissionRow.loss)
                .join(RoundRow, SubmissionRow.round_id == RoundRow.id)
                .where(*committed)
                .order_by(SubmissionRow.round_id, SubmissionRow.slot)
            )
            by_round: dict[int, list[float | None]] = {}
            for round_id, loss in reported:
                by_round.setdefault(round_id, []).append(loss)
            return [by_round.get(round_id, []) for round_id in round_ids]

    @staticmethod
    def _records(s: Session, task_id: str, first: int, last: int | None) -> list[RoundRecord]:
        q = select(RoundRow.round, RoundRow.hash).where(
            RoundRow.task_id == task_id, RoundRow.status == ROUND_COMMITTED, RoundRow.round >= first
        )
        e = select(LedgerEntryRow.round, LedgerEntryRow.seed, LedgerEntryRow.step).where(
            LedgerEntryRow.task_id == task_id, LedgerEntryRow.round >= first
        )
        if last is not None:
            q = q.where(RoundRow.round <= last)
            e = e.where(LedgerEntryRow.round <= last)
        heads = s.execute(q.order_by(RoundRow.round)).all()
        entries: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for r, sd, st in s.execute(e.order_by(LedgerEntryRow.round, LedgerEntryRow.seed)):
            entries[int(r)].append((int(sd), int(st)))
        out = []
        for r, h in heads:
            es = entries.get(int(r), [])
            out.append(RoundRecord(int(r), tuple(sd for sd, _ in es), tuple(st for _, st in es), bytes(h)))
        return out

    def round_attempts(self, task_id: str) -> list[RoundAttempt]:
        with self._tx() as s:
            counts = dict(
                s.execute(
                    select(SubmissionRow.round_id, func.count())
                    .where(SubmissionRow.task_id == task_id)
                    .group_by(SubmissionRow.round_id)
                ).all()
            )
            rows = s.execute(
                select(RoundRow).where(RoundRow.task_id == task_id).order_by(RoundRow.round, RoundRow.attempt)
            ).scalars()
            return [
                RoundAttempt(int(r.round), r.attempt, r.status, r.opened_at, r.closed_at, int(counts.get(r.id, 0))) for r in rows
            ]

    def committed_submissions(self, task_id: str, round_no: int) -> tuple[RoundPlan, list[Submission]] | None:
        with self._tx() as s:
            row = s.execute(
                select(RoundRow).where(
                    RoundRow.task_id == task_id, RoundRow.round == round_no, RoundRow.status == ROUND_COMMITTED
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            return self._plan(s, row), self._submissions(s, row.id)

    def seed_stats(self, task_id: str) -> dict[int, tuple[float, int]]:
        with self._tx() as s:
            rows = s.execute(
                select(SeedStatRow.seed, SeedStatRow.sum_abs, SeedStatRow.count).where(SeedStatRow.task_id == task_id)
            )
            return {int(sd): (a, int(n)) for sd, a, n in rows}

    def import_rounds(self, spec: TaskSpec, records: Sequence[RoundRecord], now: float | None = None) -> int:
        now = time.time() if now is None else now
        spec = canonical_spec(spec)
        stored_spec = self.get_task(spec.task_id)
        if stored_spec is not None and stored_spec.canonical_bytes() != spec.canonical_bytes():
            raise TaskConflictError(f"task {spec.task_id!r} exists with a different genesis")
        with self._tx() as s:
            if stored_spec is None:
                s.add(
                    TaskRow(
                        task_id=spec.task_id, genesis=spec.canonical_bytes(), genesis_hash=spec.genesis_hash(), created_at=now
                    )
                )
                s.flush()
            if self._open_row(s, spec.task_id) is not None:
                raise StoreConflict(f"task {spec.task_id}: an attempt is open; stop the coordinator first")
            head, _ = self._head(s, spec.task_id)
            stored = self._records(s, spec.task_id, 1, None) if head else []
            new = check_import(spec, records, stored)
            for rec in new:
                attempt = (
                    s.execute(
                        select(func.coalesce(func.max(RoundRow.attempt), 0)).where(
                            RoundRow.task_id == spec.task_id, RoundRow.round == rec.round
                        )
                    ).scalar_one()
                    + 1
                )
                s.add(
                    RoundRow(
                        task_id=spec.task_id,
                        round=rec.round,
                        attempt=attempt,
                        status=ROUND_COMMITTED,
                        opened_at=now,
                        deadline=now,
                        closed_at=now,
                        lr=spec.lr_at(rec.round),
                        scalar_scale=spec.scalar_scale,
                        group_size=spec.group_size,
                        group_seeds="[]",
                        hash=rec.hash,
                        payload=round_payload(rec.round, rec.entries),
                        submissions_counted=0,
                    )
                )
                if rec.seeds:
                    s.execute(
                        insert(LedgerEntryRow),
                        [
                            {"task_id": spec.task_id, "round": rec.round, "seed": sd, "step": q}
                            for sd, q in zip(rec.seeds, rec.steps)
                        ],
                    )
            return len(new)

    def digest_reports(self, task_id: str, round_no: int) -> dict[str, str]:
        with self._tx() as s:
            rows = s.execute(
                select(DigestReportRow.client_id, DigestReportRow.digest).where(
                    DigestReportRow.task_id == task_id, DigestReportRow.round == round_no
                )
            )
            return {c: d for c, d in rows}

    def digest_rounds(self, task_id: str, limit: int) -> list[int]:
        with self._tx() as s:
            rows = s.execute(
                select(DigestReportRow.round)
                .where(DigestReportRow.task_id == task_id)
                .distinct()
                .order_by(DigestReportRow.round.desc())
                .limit(limit)
            ).scalars()
            return [int(r) for r in rows]

    def summary(self, task_id: str) -> TaskSummary:
        with self._tx() as s:
            head, head_hash = self._head(s, task_id)
            clients = s.execute(select(func.count()).select_from(ClientRow).where(ClientRow.task_id == task_id)).scalar_one()
            abandoned = s.execute(
                select(func.count()).select_from(RoundRow).where(RoundRow.task_id == task_id, RoundRow.status == ROUND_ABANDONED)
            ).scalar_one()
            size = s.execute(
                select(func.coalesce(func.sum(func.length(RoundRow.payload)), 0)).where(
                    RoundRow.task_id == task_id, RoundRow.status == ROUND_COMMITTED
                )
            ).scalar_one()
            loss = s.execute(
                select(RoundRow.mean_loss)
                .where(RoundRow.task_id == task_id, RoundRow.status == ROUND_COMMITTED)
                .order_by(RoundRow.round.desc())
                .limit(1)
            ).scalar_one_or_none()
            return TaskSummary(task_id, head, head_hash, int(clients), int(abandoned), int(size), loss)
