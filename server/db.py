"""Database URLs, engines and schema migrations: the one way from a URL to a store.

SQLite is the embedded default: WAL (readers never block the writer), a busy
timeout, foreign keys on, synchronous=FULL so that an acknowledged
submission survives a crash. The coordinator writes from one thread only
(see writer.py), so SQLite's single-writer rule costs nothing. PostgreSQL is
chosen by URL (postgresql+psycopg://...). ``memory://`` keeps the ledger in
the coordinator's own memory: a throwaway run, gone when it stops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from seedfed.server.store import LedgerStore

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DEFAULT_DB_URL = "sqlite:///seedfed.db"
MEMORY_URL = "memory://"


class DatabaseError(RuntimeError):
    """A database URL that cannot be used, or a schema that cannot be brought up to date."""


def normalize_url(url: str) -> str:
    """Accept a bare path as a SQLite file; plain postgresql:// means psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, *, schema: str | None = None, echo: bool = False) -> Engine:
    """An engine for ``url``. ``schema`` (PostgreSQL only) sets the search_path:
    tests give every test its own schema in a shared database."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise DatabaseError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise DatabaseError("an in-memory SQLite database would lose the ledger; give a file path")
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise DatabaseError(f"directory {parent} for the SQLite database does not exist")
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; emit it ourselves so a
        # transaction really starts where SQLAlchemy says it does.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        return engine
    if backend == "postgresql":
        connect_args = {"options": f"-csearch_path={schema}"} if schema else {}
        return create_engine(url, echo=echo, pool_size=5, max_overflow=5, pool_pre_ping=True, connect_args=connect_args)
    raise DatabaseError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql+psycopg://...")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # Let SQLAlchemy's "begin" event control transactions (see make_engine).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


_PG_LOCK_KEY = "hashtext('seedfed-coordinator:' || current_schema())"


class CoordinatorLock:
    """One coordinator per database: two would fight over the same rounds.

    SQLite: an exclusive flock on ``<file>.lock`` (released by the OS when the
    process dies, even by SIGKILL). PostgreSQL: a session advisory lock keyed
    by the schema, held on a dedicated connection (released when it closes).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._fd: int | None = None
        self._conn = None

    def acquire(self) -> CoordinatorLock:
        if self.engine.dialect.name == "sqlite":
            import fcntl
            import os

            path = Path(self.engine.url.database or "").expanduser().resolve()
            fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DatabaseError(f"another coordinator is running on {path}") from None
            self._fd = fd
        else:
            conn = self.engine.connect()
            got = conn.execute(text(f"SELECT pg_try_advisory_lock({_PG_LOCK_KEY})")).scalar()
            conn.commit()
            if not got:
                conn.close()
                raise DatabaseError(f"another coordinator is running on {self.engine.url.render_as_string(hide_password=True)}")
            self._conn = conn
        return self

    def release(self) -> None:
        if self._fd is not None:
            import os

            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(text(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})"))
            except Exception:  # the session is gone anyway; so is its lock
                pass
            # A pooled connection outlives close(): end the session for real.
            self._conn.invalidate()
            self._conn.close()
            self._conn = None


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration (run at coordinator startup)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def downgrade_to_base(engine: Engine) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def is_memory(url: str) -> bool:
    return url.strip().rstrip("/") == MEMORY_URL.rstrip("/")


def open_store(url: str, *, must_exist: bool = False, lock: bool = False) -> tuple[LedgerStore, CoordinatorLock | None]:
    """The ledger store at ``url`` (see ``open_database`` for the flags).

    ``memory://`` is for the coordinator alone (``lock``: the process that
    serves the ledger): a MemoryStore with no migrations and no lock, since
    no other process can reach it. To any other tool it would be an empty
    database that vanishes when the command ends, so they get a DatabaseError.
    """
    if is_memory(url):
        if not lock:
            raise DatabaseError(
                f"{MEMORY_URL} lives only inside a running coordinator; give this command a database file or server"
            )
        from seedfed.server.memory_store import MemoryStore

        log.warning("the ledger is in memory (%s): nothing survives a restart of this coordinator", MEMORY_URL)
        return MemoryStore(), None
    from seedfed.server.sql_store import SqlStore

    engine, held = open_database(url, must_exist=must_exist, lock=lock)
    return SqlStore(engine), held


def open_database(url: str, *, must_exist: bool = False, lock: bool = False) -> tuple[Engine, CoordinatorLock | None]:
    """The one way to open a coordinator database: an engine migrated to the
    newest schema, and with ``lock`` the one-coordinator lock taken first.
    ``must_exist`` refuses to create a new SQLite file (tools that only read).
    Every failure is a DatabaseError with one message form."""
    if is_memory(url):
        raise DatabaseError(f"{MEMORY_URL} keeps no tables: give a database file or server")
    url = normalize_url(url)
    if must_exist and url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            raise DatabaseError(f"no database at {path}: create a task first (seedfed task create)")
    engine = make_engine(url)
    held = None
    try:
        if lock:
            held = CoordinatorLock(engine).acquire()
        upgrade_to_head(engine)
    except BaseException as exc:
        if held is not None:
            held.release()
        engine.dispose()
        if isinstance(exc, DatabaseError) or not isinstance(exc, Exception):
            raise
        # driver errors: unreachable server, bad credentials, ...
        raise DatabaseError(f"cannot open database {url}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    return engine, held
