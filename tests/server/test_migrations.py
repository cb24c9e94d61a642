"""Alembic migrations: applied at startup on both backends, and in step with the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from seedfed.server.db import current_revision, downgrade_to_base, head_revision, make_engine, upgrade_to_head
from seedfed.server.models import Base

TABLES = {"tasks", "clients", "rounds", "assignments", "submissions", "ledger_entries", "seed_stats", "digest_reports", "tokens"}


def test_upgrade_downgrade_upgrade(engine) -> None:  # noqa: ANN001
    assert current_revision(engine) is None
    upgrade_to_head(engine)
    assert current_revision(engine) == head_revision()
    assert TABLES <= set(inspect(engine).get_table_names())
    upgrade_to_head(engine)  # a second start changes nothing
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == [], f"models and migrations disagree: {diffs}"
    downgrade_to_base(engine)
    assert not (TABLES & set(inspect(engine).get_table_names()))
    upgrade_to_head(engine)
    assert TABLES <= set(inspect(engine).get_table_names())


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path) -> None:  # noqa: ANN001
    e = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with e.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    e.dispose()


def test_one_coordinator_per_database(engine) -> None:  # noqa: ANN001
    from seedfed.server.db import CoordinatorLock, DatabaseError

    first = CoordinatorLock(engine).acquire()
    with pytest.raises(DatabaseError, match="another coordinator"):
        CoordinatorLock(engine).acquire()
    first.release()
    CoordinatorLock(engine).acquire().release()


def test_dropping_client_token_hash_keeps_every_row(engine) -> None:  # noqa: ANN001
    """Revision 0003 drops the never-written clients.token_hash on a database with
    rows that refer to clients, and 0002 brings the column back."""
    from alembic import command

    from seedfed.server.db import alembic_config

    def to(revision: str, down: bool = False) -> None:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)

    def columns() -> list[str]:
        return [c["name"] for c in inspect(engine).get_columns("clients")]

    def rows() -> tuple:
        with engine.connect() as conn:
            return tuple(
                conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY 1")).all()
                for table, cols in (
                    ("clients", "id, task_id, client_id, name, joined_at, lease_until, last_seen"),
                    ("rounds", "id, task_id, round, attempt, status"),
                    ("assignments", "id, round_id, client_id, slot"),
                )
            )

    to("0002")
    assert "token_hash" in columns()
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tasks (task_id, genesis, genesis_hash, created_at) VALUES ('t', :g, :h, 1)"),
            {"g": b"{}", "h": b"\0" * 32},
        )
        for i in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO clients (task_id, client_id, name, joined_at, lease_until, last_seen)"
                    " VALUES ('t', :c, :n, 1, 2, 3)"
                ),
                {"c": f"c{i}", "n": f"dev{i}"},
            )
        conn.execute(
            text(
                "INSERT INTO rounds (task_id, round, attempt, status, opened_at, deadline, lr, group_size, group_seeds)"
                " VALUES ('t', 1, 1, 'open', 1, 2, 0.1, 0, '[]')"
            )
        )
        conn.execute(text("INSERT INTO assignments (round_id, client_id, slot) SELECT id, 'c1', 0 FROM rounds"))
    before = rows()
    upgrade_to_head(engine)
    assert "token_hash" not in columns()
    assert rows() == before
    to("0002", down=True)
    assert "token_hash" in columns() and rows() == before
    upgrade_to_head(engine)
    assert "token_hash" not in columns() and rows() == before
