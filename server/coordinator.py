"""The coordinator process state: one store, one writer, the rounds of each task."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from seedfed.server import errors
from seedfed.server.observer import NULL_OBSERVER, Observer
from seedfed.server.rounds import RoundsConfig, TaskRounds
from seedfed.server.store import LedgerStore
from seedfed.server.writer import StoreWriter
from seedfed.shared.taskspec import TaskSpec
from seedfed.shared.wire import TASK_ID


class Coordinator:
    def __init__(self, store: LedgerStore, config: RoundsConfig = RoundsConfig(), observer: Observer = NULL_OBSERVER) -> None:
        self.store = store
        self.config = config
        self.observer = observer
        self.writer = StoreWriter(store)
        # Reads (catch-up, GetLedger) run beside the writer; SQLite in WAL mode lets them.
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seedfed-reader")
        self.rounds: dict[str, TaskRounds] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        for spec in await self.writer.run(self.store.list_tasks):
            await self._start_rounds(spec)

    async def register_task(self, spec: TaskSpec) -> bool:
        """Idempotent: the same genesis again is fine; a different one raises TaskConflictError."""
        created = await self.writer.run(self.store.register_task, spec, time.time())
        await self.rounds_of(spec.task_id)
        return created

    async def _start_rounds(self, spec: TaskSpec) -> TaskRounds:
        rounds = TaskRounds(self.store, self.writer, spec, self._reader, self.config, self.observer)
        await rounds.start()
        self.rounds[spec.task_id] = rounds
        return rounds

    async def rounds_of(self, task_id: str) -> TaskRounds:
        rounds = self.rounds.get(task_id)
        if rounds is not None:
            return rounds
        if self._closed:
            raise errors.shutting_down("the coordinator is shutting down")
        async with self._lock:
            if task_id in self.rounds:
                return self.rounds[task_id]
            # A task created by `seedfed task create` on the same database after startup.
            spec = await self.writer.run(self.store.get_task, task_id) if task_id else None
            if spec is None:
                raise errors.unknown_task(task_id)
            return await self._start_rounds(spec)

    def only_task_id(self) -> str:
        """The task a request that names none means: the only one served."""
        if len(self.rounds) == 1:
            return next(iter(self.rounds))
        raise errors.bad_field(TASK_ID, "", f"this coordinator serves {len(self.rounds)} tasks; name one in task_id")

    async def stop(self) -> None:
        self._closed = True
        for rounds in self.rounds.values():
            await rounds.stop()

    async def close(self) -> None:
        await self.writer.close()
        self._reader.shutdown(wait=True)
        self.store.close()
