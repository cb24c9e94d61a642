"""The rounds of one task: membership, leases, the round state machine
(open -> collect -> commit | abandon -> reopen) and the live event fan-out.

All state lives on the asyncio loop; every change of durable state goes
through the single writer (writer.py) first and is applied in memory only
after its transaction committed, so memory never runs ahead of the database.
One driver coroutine makes every round transition; RPC handlers only wake
it. After a restart a task's rounds are rebuilt from the store: the same open
attempt, the same assignments, the same accepted submissions.

A request is checked completely before anything changes: a refusal leaves
leases, who is online, round attempts and digest reports as they were.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from seedfed.server import errors
from seedfed.server.observer import NULL_OBSERVER, Observer
from seedfed.server.store import (
    CommitResult,
    DigestReport,
    LedgerStore,
    OpenRound,
    PendingJoin,
    PendingSubmission,
    RoundPlan,
    StoreConflict,
    Submission,
    SubmitOutcome,
)
from seedfed.server.writer import StoreWriter
from seedfed.shared.ledger import RoundRecord, round_payload
from seedfed.shared.loss_guard import LossGuard, round_loss
from seedfed.shared.round_math import CommittedRound, compute_commit, history_rounds, plan_round
from seedfed.shared.taskspec import TaskSpec
from seedfed.shared.wire import CLIENT_NAME, DIGEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundsConfig:
    lease_seconds: float = 30.0
    tick_seconds: float = 0.25  # how soon a lapsed lease or a passed deadline is noticed
    record_cache_rounds: int = 4096  # newest committed rounds kept in memory for catch-up
    subscriber_queue: int = 10_000  # events buffered per Sync stream before it is cut off
    digest_rounds_kept: int = 64


@dataclass(frozen=True)
class CommitEvent:
    record: RoundRecord


@dataclass(frozen=True)
class OpenEvent:
    plan: RoundPlan
    slot: int


class StreamClosed:
    """Sentinel event: the stream must end (Leave, overflow, shutdown)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Event = CommitEvent | OpenEvent | StreamClosed
# head, head hash, open attempt, abandoned round, seed statistics, loss guard
RoundsSnapshot = tuple[int, bytes, OpenRound | None, int, dict[int, tuple[float, int]], LossGuard | None]


class Subscription:
    def __init__(self, client_id: str, maxsize: int) -> None:
        self.client_id = client_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self.closed = False

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if isinstance(event, StreamClosed) or self.queue.qsize() >= self._maxsize:
            self.closed = True
            event = event if isinstance(event, StreamClosed) else StreamClosed("overflow")
        self.queue.put_nowait(event)


@dataclass
class ClientState:
    client_id: str
    name: str
    seq: int
    lease_until: float
    streams: int = 0

    def online(self, now: float) -> bool:
        return self.streams > 0 or self.lease_until > now


@dataclass
class OpenState:
    plan: RoundPlan
    slot_of: dict[str, int]
    submissions: dict[str, Submission] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class JoinResult:
    client_id: str
    head_round: int
    head_hash: bytes
    lease_seconds: float
    first_work_round: int


@dataclass(frozen=True)
class SyncStart:
    subscription: Subscription
    head_round: int
    head_hash: bytes
    current_open: OpenEvent | None


@dataclass(frozen=True)
class SubmitAnswer:
    received: int  # submissions of the open attempt, this one included
    expected: int  # slots of the open attempt
    identical: bool  # a retry of a submission accepted before: nothing changed


@dataclass(frozen=True)
class StatusSnapshot:
    task_id: str
    head_round: int
    head_hash: bytes
    open_round: int
    clients_online: int
    submissions_in_open_round: int
    digest_round: int
    digest: str
    ledger_bytes: int
    last_loss: float | None


class TaskRounds:
    def __init__(
        self,
        store: LedgerStore,
        writer: StoreWriter,
        spec: TaskSpec,
        reader: Executor,
        config: RoundsConfig = RoundsConfig(),
        observer: Observer = NULL_OBSERVER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.writer, self.spec, self.config, self.observer = store, writer, spec, config, observer
        self._reader = reader
        self._clock = clock
        self.task_id = spec.task_id
        self.genesis = spec.canonical_bytes()
        self.genesis_hash = spec.genesis_hash()
        self.head_round = 0
        self.head_hash = self.genesis_hash
        self.clients: dict[str, ClientState] = {}
        self._by_name: dict[str, str] = {}
        self.open: OpenState | None = None
        self._abandoned_round = 0  # the round number whose last attempt was abandoned, while none is open
        # slots of the last abandoned attempt of the current round: a submission
        # made for it is late, not for a wrong slot
        self._abandoned_slots: tuple[int, dict[str, int]] = (0, {})
        self._seed_stats: dict[int, tuple[float, int]] = {}
        self._guard: LossGuard | None = LossGuard.for_spec(spec)
        self._records: OrderedDict[int, RoundRecord] = OrderedDict()
        self._subs: dict[str, set[Subscription]] = {}
        self._digests: dict[int, dict[str, str]] = {}
        self._ledger_bytes = 0
        self._last_loss: float | None = None
        self._wake = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None
        self._stopping = False
        self._open_started = 0.0

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        await self.writer.run(self._load)
        self._driver = asyncio.get_running_loop().create_task(self._drive(), name=f"round-driver:{self.task_id}")

    def _load(self) -> None:
        s = self.store
        for c in s.get_clients(self.task_id):
            self.clients[c.client_id] = ClientState(c.client_id, c.name, c.seq, c.lease_until)
            self._by_name[c.name] = c.client_id
        self._apply_rounds(self._read_rounds())
        self._load_digests()

    def _read_rounds(self) -> RoundsSnapshot:
        """Head, open attempt, abandoned round, seed statistics and loss guard as stored (writer thread)."""
        s = self.store
        head, head_hash = s.head(self.task_id)
        o = s.get_open_round(self.task_id)
        abandoned = head + 1 if o is None and s.last_attempt(self.task_id, head + 1) > 0 else 0
        stats = s.seed_stats(self.task_id) if self.spec.sampling == "fedkseed_pro" else {}
        guard = LossGuard.for_spec(self.spec)
        if guard:
            # the guard is a function of every committed round's reported losses and entries
            losses = s.committed_losses(self.task_id)
            for rec, reported in zip(s.get_rounds(self.task_id, 1, head), losses, strict=True):
                guard.record(rec.round, round_loss(reported), rec.entries)
        return head, head_hash, o, abandoned, stats, guard

    def _apply_rounds(self, snapshot: RoundsSnapshot) -> None:
        self.head_round, self.head_hash, o, self._abandoned_round, self._seed_stats, self._guard = snapshot
        self.open = None
        if o is not None:
            slot_of = o.plan.slot_of()
            self.open = OpenState(o.plan, slot_of, dict(o.submissions), set(slot_of) - set(o.submissions))
            self._open_started = o.plan.opened_at

    async def _recover(self) -> None:
        """After a failed transition: take the store's state, and tell the
        streams whatever they missed (commits, a different open attempt)."""
        old_head, old_open = self.head_round, self.open
        self._apply_rounds(await self.writer.run(self._read_rounds))
        if self.head_round > old_head:
            for rec in await self.records(old_head + 1, self.head_round):
                self._publish_commit(rec)
        o = self.open
        if o is not None and (old_open is None or (old_open.plan.round, old_open.plan.attempt) != (o.plan.round, o.plan.attempt)):
            self._publish_open(o.plan, o.slot_of)

    def _load_digests(self) -> None:
        s = self.store
        for r in sorted(s.digest_rounds(self.task_id, self.config.digest_rounds_kept)):
            self._digests[r] = s.digest_reports(self.task_id, r)
        summary = s.summary(self.task_id)
        self._ledger_bytes, self._last_loss = summary.ledger_bytes, summary.last_loss

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._driver is not None:
            self._driver.cancel()
            try:
                await self._driver
            except (asyncio.CancelledError, Exception):
                pass
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.push(StreamClosed("shutdown"))

    @property
    def finished(self) -> bool:
        return self.spec.max_rounds > 0 and self.head_round >= self.spec.max_rounds

    def now(self) -> float:
        return self._clock()

    # -- membership -----------------------------------------------------------
    def _client(self, client_id: str) -> ClientState:
        c = self.clients.get(client_id)
        if c is None:
            raise errors.unknown_client(client_id)
        return c

    def online_clients(self, now: float | None = None) -> list[ClientState]:
        now = self.now() if now is None else now
        return sorted((c for c in self.clients.values() if c.online(now)), key=lambda c: c.seq)

    async def join(self, name: str, base_digest: str) -> JoinResult:
        errors.check_field(CLIENT_NAME, name)
        if base_digest != self.spec.base_digest:
            raise errors.base_digest(base_digest, self.spec.base_digest)
        now = self.now()
        lease_until = now + self.config.lease_seconds
        known = self._by_name.get(name)
        if known is not None:
            # A rejoin (every client after a coordinator restart): the identity is
            # already durable; the lease is written lazily like a heartbeat's.
            state = self.clients[known]
            state.lease_until = lease_until
            self.writer.renew_lease(self.task_id, known, lease_until, now)
        else:
            client = await self.writer.join(PendingJoin(self.task_id, name, secrets.token_hex(8), now, lease_until))
            state = self.clients.get(client.client_id)
            if state is None:
                state = self.clients[client.client_id] = ClientState(client.client_id, name, client.seq, lease_until)
                self._by_name[name] = client.client_id
            state.lease_until = max(state.lease_until, lease_until)
        self._wake.set()
        o = self.open
        if o is None:
            first_work = self.head_round + 1
        else:  # a rejoin keeps the slot it holds in the open round
            first_work = o.plan.round if state.client_id in o.slot_of else o.plan.round + 1
        return JoinResult(state.client_id, self.head_round, self.head_hash, self.config.lease_seconds, first_work)

    async def leave(self, client_id: str) -> None:
        c = self._client(client_id)
        # Dropped before the write, so a renewal flushed after it cannot bring the lease back.
        dropped = self.writer.forget_lease(self.task_id, client_id)
        try:
            await self.writer.run(self.store.leave_client, self.task_id, client_id, self.now())
        except BaseException:
            if dropped is not None:
                self.writer.restore_lease(self.task_id, client_id, dropped)
            raise
        c.lease_until = 0.0
        for sub in list(self._subs.get(client_id, ())):
            sub.push(StreamClosed("left"))
        self._wake.set()

    def heartbeat(self, client_id: str, digest_round: int, digest: str) -> tuple[int, bool, str]:
        """Renew the lease; record a digest report. Returns (head, digest_ok, expected digest)."""
        c = self._client(client_id)
        report = bool(digest or digest_round)
        if report:
            errors.check_field(DIGEST, digest)
            if not 1 <= digest_round <= self.head_round:
                raise errors.digest_round(digest_round, self.head_round)
        now = self.now()
        was_online = c.online(now)
        c.lease_until = now + self.config.lease_seconds
        self.writer.renew_lease(self.task_id, client_id, c.lease_until, now)
        if not was_online:
            self._wake.set()
        if not report:
            return self.head_round, True, ""
        reports = self._digests.setdefault(digest_round, {})
        while len(self._digests) > self.config.digest_rounds_kept:
            del self._digests[min(self._digests)]
        reports[client_id] = digest
        self.writer.report_digest(DigestReport(self.task_id, client_id, digest_round, digest, now))
        majority = _majority(reports)
        return self.head_round, digest == majority, majority

    # -- Sync -----------------------------------------------------------------
    def subscribe(self, client_id: str, from_round: int) -> SyncStart:
        """Register a stream; everything after this instant arrives on its queue."""
        c = self._client(client_id)
        if from_round > self.head_round + 1:
            raise errors.from_round(from_round, self.head_round)
        sub = Subscription(client_id, self.config.subscriber_queue)
        self._subs.setdefault(client_id, set()).add(sub)
        was_online = c.online(self.now())
        c.streams += 1
        if not was_online:
            self._wake.set()
        current = None
        if self.open is not None and client_id in self.open.slot_of:
            current = OpenEvent(self.open.plan, self.open.slot_of[client_id])
        return SyncStart(sub, self.head_round, self.head_hash, current)

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.client_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.client_id]
            c = self.clients.get(sub.client_id)
            if c is not None:
                c.streams -= 1
                # Only the lease of the last heartbeat (or Join) still counts now.
            self._wake.set()

    def streams_open(self) -> int:
        return sum(len(s) for s in self._subs.values())

    async def records(self, first: int, last: int) -> list[RoundRecord]:
        """Committed rounds first..last (inclusive, both <= head), from the cache or the store."""
        first = max(first, 1)
        if first > last:
            return []
        if first in self._records and last in self._records:
            return [self._records[r] for r in range(first, last + 1)]
        recs = await asyncio.get_running_loop().run_in_executor(self._reader, self.store.get_rounds, self.task_id, first, last)
        return recs

    # -- Submit ---------------------------------------------------------------
    async def submit(
        self, client_id: str, round_no: int, slot: int, scalars: bytes, loss: float, examples: int = 0
    ) -> SubmitAnswer:
        c = self._client(client_id)
        o = self.open
        if o is None:
            if round_no <= self.head_round or round_no == self._abandoned_round:
                raise errors.late(round_no)
            raise errors.wrong_round(round_no, 0)
        plan = o.plan
        if round_no < plan.round:
            raise errors.late(round_no)
        if round_no > plan.round:
            raise errors.wrong_round(round_no, plan.round)
        mine = o.slot_of.get(client_id)
        if mine is None or slot != mine:
            stale_round, stale_slots = self._abandoned_slots
            if stale_round == round_no and stale_slots.get(client_id) == slot:
                raise errors.late(round_no)  # made for the abandoned attempt of this round
            raise errors.not_assigned(round_no) if mine is None else errors.wrong_slot(slot, round_no)
        want = len(plan.seeds_of_slot(slot))
        if len(scalars) != want:
            raise errors.scalar_count(len(scalars), want)
        if 0x80 in scalars:
            raise errors.scalar_value()
        if self.spec.weighs_by_examples and examples < 1:
            raise errors.examples_missing()
        examples = examples if self.spec.weighs_by_examples else 0  # stored only where it counts
        have = o.submissions.get(client_id)
        if have is not None:
            if have.scalars == scalars:
                return SubmitAnswer(len(o.submissions), len(plan.slots), identical=True)
            raise errors.duplicate(round_no, slot)
        now = self.now()
        loss_value = float(loss) if math.isfinite(loss) else None
        outcome = await self.writer.submit(
            PendingSubmission(self.task_id, round_no, plan.attempt, client_id, slot, scalars, loss_value, now, examples)
        )
        if outcome is SubmitOutcome.LATE:
            raise errors.late(round_no)
        if outcome is SubmitOutcome.DUPLICATE:
            raise errors.duplicate(round_no, slot)
        c.lease_until = max(c.lease_until, now + self.config.lease_seconds)  # a submission proves liveness
        identical = outcome is SubmitOutcome.IDENTICAL
        o2 = self.open
        if o2 is not None and o2.plan.round == round_no and o2.plan.attempt == plan.attempt:
            o2.submissions.setdefault(client_id, Submission(client_id, slot, scalars, loss_value, now, examples))
            o2.waiting.discard(client_id)
            self._wake.set()
            return SubmitAnswer(len(o2.submissions), len(plan.slots), identical)
        return SubmitAnswer(len(o.submissions), len(plan.slots), identical)

    # -- status ---------------------------------------------------------------
    def status(self) -> StatusSnapshot:
        digest_round, digest = 0, ""
        for r in sorted(self._digests, reverse=True):
            if self._digests[r]:
                digest_round, digest = r, _majority(self._digests[r])
                break
        o = self.open
        return StatusSnapshot(
            self.task_id,
            self.head_round,
            self.head_hash,
            o.plan.round if o else 0,
            len(self.online_clients()),
            len(o.submissions) if o else 0,
            digest_round,
            digest,
            self._ledger_bytes,
            self._last_loss,
        )

    # -- the driver -----------------------------------------------------------
    async def _drive(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A transient database error (or a state the store refused): re-read
                # the round state from the store, which is the truth, and go on.
                log.exception("round transition failed for task %s", self.task_id)
                await asyncio.sleep(0.5)
                try:
                    await self._recover()
                except Exception:
                    log.exception("cannot re-read the round state of task %s", self.task_id)
            timeout = self.config.tick_seconds
            if self.open is not None:
                timeout = max(0.0, min(timeout, self.open.plan.deadline - self.now()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _step(self) -> None:
        now = self.now()
        o = self.open
        if o is not None:
            n = len(o.submissions)
            waiting_online = any(self.clients[cid].online(now) for cid in o.waiting if cid in self.clients)
            if n >= self.spec.min_clients and not waiting_online:
                await self._commit(o)
            elif now >= o.plan.deadline:
                if n >= self.spec.min_clients:
                    await self._commit(o)
                else:
                    await self._abandon(o)
        if self.open is None and not self.finished and not self._stopping:
            online = self.online_clients(now)
            self.observer.clients_online(self.task_id, len(online))
            if len(online) >= self.spec.min_clients:
                await self._open_round([c.client_id for c in online])

    async def _open_round(self, client_ids: list[str]) -> None:
        round_no = self.head_round + 1
        attempt = await self.writer.run(self.store.last_attempt, self.task_id, round_no) + 1
        history = await self.writer.run(self._history, round_no)
        plan = plan_round(self.spec, round_no, attempt, client_ids, self._seed_stats, self.now(), history, self._guard)
        await self.writer.run(self.store.open_round, plan)
        slot_of = plan.slot_of()
        self.open = OpenState(plan, slot_of, {}, set(slot_of))
        self._abandoned_round = 0
        self._open_started = self.now()
        self.observer.round_opened(self.task_id, round_no, attempt, len(client_ids))
        self._publish_open(plan, slot_of)

    def _publish_open(self, plan: RoundPlan, slot_of: dict[str, int]) -> None:
        for cid, slot in slot_of.items():
            event = OpenEvent(plan, slot)
            for sub in self._subs.get(cid, ()):
                sub.push(event)

    def _publish_commit(self, rec: RoundRecord) -> None:
        self._records[rec.round] = rec
        while len(self._records) > self.config.record_cache_rounds:
            self._records.popitem(last=False)
        event = CommitEvent(rec)
        for subs in self._subs.values():
            for sub in subs:
                sub.push(event)

    def _history(self, round_no: int) -> list[CommittedRound]:
        """The committed rounds before ``round_no`` that its scale and aggregation
        read, as stored (writer thread): a restarted coordinator reads the same."""
        first = max(1, round_no - history_rounds(self.spec))
        stored = (self.store.committed_submissions(self.task_id, r) for r in range(first, round_no))
        return [CommittedRound(plan, subs) for plan, subs in filter(None, stored)]

    def _commit_in_writer(self, plan: RoundPlan) -> CommitResult:
        """Runs on the writer thread: reads the attempt's stored submissions and
        commits; no other write can slip in between."""
        current = self.store.get_open_round(self.task_id)
        if current is None or (current.plan.round, current.plan.attempt) != (plan.round, plan.attempt):
            raise StoreConflict(f"round {plan.round} attempt {plan.attempt} is no longer open")
        history = self._history(plan.round)
        result = compute_commit(self.spec, current.plan, list(current.submissions.values()), self.head_hash, history, self._guard)
        self.store.commit_round(self.task_id, plan.round, plan.attempt, result, self.now())
        if result.saturated:
            log.info("task %s round %d: bytes saturated at scale %g, no step", self.task_id, plan.round, plan.scalar_scale)
        if result.rolled_back:
            log.info("task %s round %d: loss rose: back to the best window's weights, lr halved", self.task_id, plan.round)
        if result.left_out:
            log.info("task %s round %d: outlying clients left out: %s", self.task_id, plan.round, ", ".join(result.left_out))
        return result

    async def _commit(self, o: OpenState) -> None:
        t0 = time.perf_counter()
        result = await self.writer.run(self._commit_in_writer, o.plan)
        rec = result.record
        self.head_round, self.head_hash = rec.round, rec.hash
        self.open = None
        self._ledger_bytes += len(round_payload(rec.round, rec.entries))
        if result.mean_loss is not None:
            self._last_loss = result.mean_loss
        if self._guard:
            self._guard.record(rec.round, result.loss, rec.entries)
        for seed, (a, n) in result.seed_abs.items():
            old = self._seed_stats.get(seed, (0.0, 0))
            self._seed_stats[seed] = (old[0] + a, old[1] + n)
        self.observer.round_committed(
            self.task_id, rec.round, self.now() - self._open_started, time.perf_counter() - t0, result.submissions_counted
        )
        self._publish_commit(rec)

    async def _abandon(self, o: OpenState) -> None:
        await self.writer.run(self.store.abandon_round, self.task_id, o.plan.round, o.plan.attempt, self.now())
        self.open = None
        self._abandoned_round = o.plan.round
        self._abandoned_slots = (o.plan.round, o.slot_of)
        self.observer.round_abandoned(self.task_id, o.plan.round, o.plan.attempt, len(o.submissions))
        log.info(
            "task %s round %d attempt %d abandoned with %d submissions",
            self.task_id,
            o.plan.round,
            o.plan.attempt,
            len(o.submissions),
        )


def _majority(reports: dict[str, str]) -> str:
    """The digest most clients reported; ties go to the one reported first."""
    return Counter(reports.values()).most_common(1)[0][0] if reports else ""
