"""The one writer: every database write of the coordinator runs on one
thread, in submission order.

One thread means one SQLite writer (no lock contention) and a total order of
transactions, so a commit sees exactly the submissions acknowledged before
it. Submissions arriving together are group-committed: one transaction for
the whole batch, and each is acknowledged only after that transaction is
durable. Lease renewals and digest reports ride along with the next batch
(or a periodic flush): losing a few seconds of them in a crash is harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from seedfed.server.store import Client, DigestReport, LedgerStore, PendingJoin, PendingSubmission, SubmitOutcome, WriteBatch

T = TypeVar("T")
log = logging.getLogger(__name__)


class StoreWriter:
    def __init__(self, store: LedgerStore, *, max_batch: int = 2000, lazy_flush_s: float = 1.0) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedfed-writer")
        self._max_batch = max_batch
        self._lazy_flush_s = lazy_flush_s
        self._pending: list[tuple[PendingSubmission, asyncio.Future[SubmitOutcome]]] = []
        self._joins: list[tuple[PendingJoin, asyncio.Future[Client]]] = []
        self._lazy = WriteBatch()
        self._flusher: asyncio.Task[None] | None = None
        self._lazy_timer: asyncio.TimerHandle | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run one write (or a read that must see every earlier write) on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, pending: PendingSubmission) -> SubmitOutcome:
        fut: asyncio.Future[SubmitOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((pending, fut))
        self._kick()
        return await fut

    async def join(self, pending: PendingJoin) -> Client:
        """Registrations gathered like submissions: one transaction for many new clients."""
        fut: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._joins.append((pending, fut))
        self._kick()
        return await fut

    def renew_lease(self, task_id: str, client_id: str, lease_until: float, now: float) -> None:
        self._lazy.leases[(task_id, client_id)] = (lease_until, now)
        self._schedule_lazy()

    def forget_lease(self, task_id: str, client_id: str) -> tuple[float, float] | None:
        """A client leaves: a renewal still queued must not bring its lease back.
        Returns the renewal dropped, for ``restore_lease`` if the leave fails."""
        return self._lazy.leases.pop((task_id, client_id), None)

    def restore_lease(self, task_id: str, client_id: str, renewal: tuple[float, float]) -> None:
        """Queue again a renewal that ``forget_lease`` dropped, unless a newer one is queued."""
        self._lazy.leases.setdefault((task_id, client_id), renewal)
        self._schedule_lazy()

    def report_digest(self, report: DigestReport) -> None:
        self._lazy.digests.append(report)
        self._schedule_lazy()

    def _schedule_lazy(self) -> None:
        if self._lazy_timer is None:
            self._lazy_timer = asyncio.get_running_loop().call_later(self._lazy_flush_s, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self._kick()

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # While one batch is being written, the next one gathers: the batch size
        # adapts to the load with no timer in the submit path.
        while self._pending or self._lazy or self._joins:
            if self._joins:
                joins, self._joins = self._joins[: self._max_batch], self._joins[self._max_batch :]
                await self._settle(joins, self.store.join_clients, [p for p, _ in joins])
                continue
            taken, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            batch, self._lazy = self._lazy, WriteBatch()
            batch.submissions = [p for p, _ in taken]
            try:
                outcomes = await self.run(self.store.write_batch, batch)
            except Exception as exc:  # the whole transaction rolled back: nothing was acknowledged
                log.exception("write batch failed")
                for _, fut in taken:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), outcome in zip(taken, outcomes):
                if not fut.done():
                    fut.set_result(outcome)

    async def _settle(self, items: list, fn: Callable[..., list], arg: object) -> None:  # noqa: ANN001
        try:
            results = await self.run(fn, arg)
        except Exception as exc:  # rolled back: nobody gets an answer that says otherwise
            log.exception("batched write failed")
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(items, results):
            if not fut.done():
                fut.set_result(result)

    async def close(self) -> None:
        """Write what is pending, then stop the thread."""
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self._pending or self._lazy or self._joins:
            self._kick()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        self._executor.shutdown(wait=True)
