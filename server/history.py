"""A task's history (genesis and committed rounds) read from a coordinator
database or a ledger file: what export, eval, simulate and ``seedfed ledger``
rebuild from. Errors are library errors (LedgerError, DatabaseError); the
commands turn them into messages."""

from __future__ import annotations

from seedfed.server.db import DEFAULT_DB_URL, open_store
from seedfed.shared.ledger import LedgerError, RoundRecord, read_ledger_file
from seedfed.shared.taskspec import TaskSpec


def load_history(db_url: str | None, task_id: str | None, ledger_file: str | None) -> tuple[TaskSpec, list[RoundRecord]]:
    """Genesis and committed rounds, unverified: callers verify the chain."""
    if ledger_file:
        return read_ledger_file(ledger_file)
    store, _ = open_store(db_url or DEFAULT_DB_URL, must_exist=True)
    try:
        if task_id is None:
            tasks = store.list_tasks()
            if len(tasks) != 1:
                names = ", ".join(t.task_id for t in tasks) or "none"
                raise LedgerError(f"name the task with --task (tasks in this database: {names})")
            task_id = tasks[0].task_id
        spec = store.get_task(task_id)
        if spec is None:
            raise LedgerError(f"no task {task_id!r} in this database")
        return spec, store.get_rounds(task_id, 1)
    finally:
        store.close()
