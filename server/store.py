"""The storage interface of the coordinator: one interface, two implementations
(``MemoryStore`` for throwaway runs, ``--db memory://``; ``SqlStore`` for
SQLite and PostgreSQL), one contract test suite
(tests/server/test_store_contract.py). ``db.open_store`` picks one by URL.

Every method is one transaction. Round transitions (open, commit, abandon)
check the state they expect inside that transaction and raise StoreConflict
otherwise, so a confused caller can never fork the ledger.
Methods are synchronous; the service calls the writing ones from a single
thread (writer.py) and the reading ones from any thread.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from seedfed.shared.ledger import RoundRecord
from seedfed.shared.round_math import CommitResult, RoundPlan, Submission
from seedfed.shared.taskspec import TaskSpec


class StoreError(RuntimeError):
    pass


class TaskConflictError(StoreError):
    """A task id that exists with a different genesis."""


class StoreConflict(StoreError):
    """A round transition that does not fit the stored state (e.g. committing a round that is not open)."""


class UnknownTask(StoreError):
    pass


@dataclass(frozen=True)
class Client:
    seq: int  # join order: the stable order in which slots are given
    client_id: str
    task_id: str
    name: str
    lease_until: float  # unix seconds; 0 after Leave
    last_seen: float
    last_digest_round: int | None = None
    last_digest: str | None = None


@dataclass
class OpenRound:
    plan: RoundPlan
    submissions: dict[str, Submission] = field(default_factory=dict)  # by client_id


class SubmitOutcome(enum.Enum):
    ACCEPTED = "accepted"
    IDENTICAL = "identical"  # the same bytes were accepted before: idempotent retry
    DUPLICATE = "duplicate"  # a different submission was accepted for this client and slot
    LATE = "late"  # the attempt is no longer open


@dataclass(frozen=True)
class PendingSubmission:
    task_id: str
    round: int
    attempt: int
    client_id: str
    slot: int
    scalars: bytes
    loss: float | None
    received_at: float
    examples: int = 0  # the client's claimed training examples (0: not said)


@dataclass(frozen=True)
class PendingJoin:
    task_id: str
    name: str
    new_client_id: str
    now: float
    lease_until: float


@dataclass(frozen=True)
class DigestReport:
    task_id: str
    client_id: str
    round: int
    digest: str
    reported_at: float


@dataclass
class WriteBatch:
    """Small writes that many RPCs produce, grouped into one transaction."""

    submissions: list[PendingSubmission] = field(default_factory=list)
    leases: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # (task, client) -> (lease_until, last_seen)
    digests: list[DigestReport] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.submissions or self.leases or self.digests)


@dataclass(frozen=True)
class RoundAttempt:
    round: int
    attempt: int
    status: str
    opened_at: float
    closed_at: float | None
    submissions: int


@dataclass(frozen=True)
class TaskSummary:
    task_id: str
    head_round: int
    head_hash: bytes
    clients: int
    abandoned_attempts: int
    ledger_bytes: int
    last_loss: float | None


class LedgerStore(abc.ABC):
    # -- tasks ---------------------------------------------------------------
    @abc.abstractmethod
    def register_task(self, spec: TaskSpec, now: float) -> bool:
        """Store the genesis; True if new, False if the same genesis was there.
        Raises TaskConflictError for a different genesis under the same id."""

    @abc.abstractmethod
    def get_task(self, task_id: str) -> TaskSpec | None: ...

    @abc.abstractmethod
    def list_tasks(self) -> list[TaskSpec]: ...

    # -- clients -------------------------------------------------------------
    def join_client(self, task_id: str, name: str, new_client_id: str, now: float, lease_until: float) -> Client:
        """Register ``name`` (with ``new_client_id``) or renew the client already
        registered under that name, which keeps its id."""
        return self.join_clients([PendingJoin(task_id, name, new_client_id, now, lease_until)])[0]

    @abc.abstractmethod
    def join_clients(self, joins: Sequence[PendingJoin]) -> list[Client]:
        """join_client for many at once, in one transaction; one Client per join, in order."""

    @abc.abstractmethod
    def leave_client(self, task_id: str, client_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    def get_clients(self, task_id: str) -> list[Client]:
        """All clients of the task in join order."""

    # -- rounds --------------------------------------------------------------
    @abc.abstractmethod
    def head(self, task_id: str) -> tuple[int, bytes]:
        """The newest committed round and its hash; (0, genesis hash) before the first."""

    @abc.abstractmethod
    def last_attempt(self, task_id: str, round_no: int) -> int:
        """The highest attempt number stored for ``round_no`` (0: none)."""

    @abc.abstractmethod
    def open_round(self, plan: RoundPlan) -> None:
        """Store an attempt and its assignments. Conflict unless no attempt is
        open, plan.round == head + 1 and plan.attempt == last_attempt + 1."""

    @abc.abstractmethod
    def get_open_round(self, task_id: str) -> OpenRound | None: ...

    @abc.abstractmethod
    def write_batch(self, batch: WriteBatch) -> list[SubmitOutcome]:
        """Leases, digest reports and submissions in one transaction; one outcome per submission."""

    @abc.abstractmethod
    def commit_round(self, task_id: str, round_no: int, attempt: int, result: CommitResult, now: float) -> None:
        """Conflict unless the attempt is open, the record extends the head and
        counts exactly the attempt's stored submissions."""

    @abc.abstractmethod
    def abandon_round(self, task_id: str, round_no: int, attempt: int, now: float) -> None: ...

    @abc.abstractmethod
    def get_rounds(self, task_id: str, first: int, last: int | None = None) -> list[RoundRecord]:
        """Committed rounds first..last inclusive (last None: up to the head)."""

    @abc.abstractmethod
    def committed_losses(self, task_id: str) -> list[list[float | None]]:
        """The losses reported in each committed round (its committing attempt's
        submissions, by slot), rounds 1..head in order; empty for imported rounds."""

    @abc.abstractmethod
    def round_attempts(self, task_id: str) -> list[RoundAttempt]: ...

    @abc.abstractmethod
    def committed_submissions(self, task_id: str, round_no: int) -> tuple[RoundPlan, list[Submission]] | None:
        """The plan and submissions of the attempt that committed ``round_no`` (audit, tests)."""

    @abc.abstractmethod
    def seed_stats(self, task_id: str) -> dict[int, tuple[float, int]]: ...

    @abc.abstractmethod
    def import_rounds(self, spec: TaskSpec, records: Sequence[RoundRecord], now: float | None = None) -> int:
        """Load a verified history (a ledger file): register the task, check that
        the stored rounds are a prefix of ``records``, append the rest as
        committed rounds. Returns how many were added. Conflict if the histories
        differ or an attempt is open. Imported rounds carry no submissions, so
        FedKSeed-Pro statistics restart from them."""

    # -- digests -------------------------------------------------------------
    @abc.abstractmethod
    def digest_reports(self, task_id: str, round_no: int) -> dict[str, str]: ...

    @abc.abstractmethod
    def digest_rounds(self, task_id: str, limit: int) -> list[int]:
        """The newest rounds with digest reports, newest first."""

    # -- overview ------------------------------------------------------------
    @abc.abstractmethod
    def summary(self, task_id: str) -> TaskSummary: ...

    def close(self) -> None:  # noqa: B027 - optional: only stores that hold connections override it
        pass


def check_import(spec: TaskSpec, records: Sequence[RoundRecord], stored: Sequence[RoundRecord]) -> list[RoundRecord]:
    """The records to append: ``records`` must verify from the genesis and agree with ``stored``."""
    from seedfed.shared.ledger import LedgerError, verify_chain

    try:
        verify_chain(spec.genesis_hash(), records)
    except LedgerError as exc:
        raise StoreConflict(f"the ledger to import does not verify: {exc}") from None
    for have in stored[: len(records)]:
        if records[have.round - 1] != have:
            raise StoreConflict(f"round {have.round} differs from the stored one: a different history")
    if len(stored) > len(records):
        return []
    return list(records[len(stored) :])


def canonical_spec(spec: TaskSpec) -> TaskSpec:
    """The spec as it reads back from its canonical bytes. A TaskSpec built in
    code may hold 60 where the genesis holds 60.0; storing the round-tripped
    form keeps one genesis hash for the task everywhere."""
    return TaskSpec.from_canonical(spec.canonical_bytes())
