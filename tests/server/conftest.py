"""Stores for the contract suite and the service tests: in memory, a SQLite
file, and PostgreSQL in a schema of its own per test (the database is shared
with other runs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from seedfed.server.db import MEMORY_URL, make_engine, open_store, upgrade_to_head
from seedfed.server.sql_store import SqlStore
from seedfed.server.store import LedgerStore


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # noqa: ANN001
    return f"sqlite:///{tmp_path / 'coordinator.db'}"


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[tuple[str, str]]:
    """(url, schema): a fresh schema, dropped afterwards."""
    schema = f"seedfed_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_url, schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _sql_store(url: str, schema: str | None = None) -> SqlStore:
    engine = make_engine(url, schema=schema)
    upgrade_to_head(engine)
    return SqlStore(engine)


def _open_store(backend: str, request: pytest.FixtureRequest, tmp_path) -> LedgerStore:  # noqa: ANN001
    if backend == "memory":  # as the coordinator opens --db memory://
        store, _ = open_store(MEMORY_URL, lock=True)
        return store
    if backend == "sqlite":
        return _sql_store(f"sqlite:///{tmp_path / 'store.db'}")
    url, schema = request.getfixturevalue("pg_schema")
    return _sql_store(url, schema)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[LedgerStore]:  # noqa: ANN001
    s = _open_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[SqlStore]:  # noqa: ANN001
    s = _open_store(request.param, request, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path):  # noqa: ANN001, ANN201
    """A bare, unmigrated engine on SQLite and PostgreSQL: for the migration tests."""
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    else:
        url, schema = request.getfixturevalue("pg_schema")
        e = make_engine(url, schema=schema)
    yield e
    e.dispose()
