"""Alembic migrations: applied at startup on both backends, and in step with the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from seedfed.server.db import current_revision, downgrade_to_base, head_revision, make_engine, upgrade_to_head
from seedfed.server.models import Base

TABLES = {"tasks", "clients", "rounds", "assignments", "submissions", "ledger_entries", "seed_stats", "digest_reports", "tokens"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path):  # noqa: ANN001, ANN201
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        e = make_engine(url, schema=schema)
    yield e
    e.dispose()


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
