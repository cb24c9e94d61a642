"""The coordinator process state: one store, one writer, one engine per task."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from seedfed.server import errors
from seedfed.server.observer import NULL_OBSERVER, Observer
from seedfed.server.rounds import EngineConfig, TaskEngine
from seedfed.server.store import LedgerStore
from seedfed.server.writer import StoreWriter
from seedfed.shared.taskspec import TaskSpec


class Coordinator:
    def __init__(self, store: LedgerStore, config: EngineConfig = EngineConfig(), observer: Observer = NULL_OBSERVER) -> None:
        self.store = store
        self.config = config
        self.observer = observer
        self.writer = StoreWriter(store)
        # Reads (catch-up, GetLedger) run beside the writer; SQLite in WAL mode lets them.
        self._reader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seedfed-reader")
        self.engines: dict[str, TaskEngine] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def start(self) -> None:
        for spec in await self.writer.run(self.store.list_tasks):
            await self._start_engine(spec)

    async def register_task(self, spec: TaskSpec) -> bool:
        """Idempotent: the same genesis again is fine; a different one raises TaskConflictError."""
        created = await self.writer.run(self.store.register_task, spec, time.time())
        await self.engine(spec.task_id)
        return created

    async def _start_engine(self, spec: TaskSpec) -> TaskEngine:
        engine = TaskEngine(self.store, self.writer, spec, self._reader, self.config, self.observer)
        await engine.start()
        self.engines[spec.task_id] = engine
        return engine

    async def engine(self, task_id: str) -> TaskEngine:
        engine = self.engines.get(task_id)
        if engine is not None:
            return engine
        if self._closed:
            raise errors.unavailable("the coordinator is shutting down")
        async with self._lock:
            if task_id in self.engines:
                return self.engines[task_id]
            # A task created by `seedfed task create` on the same database after startup.
            spec = await self.writer.run(self.store.get_task, task_id) if task_id else None
            if spec is None:
                raise errors.unknown_task(task_id)
            return await self._start_engine(spec)

    async def only_task_id(self) -> str:
        if len(self.engines) == 1:
            return next(iter(self.engines))
        raise errors.invalid("task-id", f"this coordinator serves {len(self.engines)} tasks; name one")

    async def stop(self) -> None:
        self._closed = True
        for engine in self.engines.values():
            await engine.stop()

    async def close(self) -> None:
        await self.writer.close()
        self._reader.shutdown(wait=True)
        self.store.close()
