"""The coordinator's tables as SQLAlchemy 2.x typed models.

The schema itself is owned by the Alembic revisions in ``migrations/``; these
models must agree with the newest revision (a test compares them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROUND_OPEN = "open"
ROUND_COMMITTED = "committed"
ROUND_ABANDONED = "abandoned"


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    genesis: Mapped[bytes] = mapped_column(LargeBinary)  # canonical JSON
    genesis_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[float] = mapped_column(Float)  # unix seconds, like every time here


class ClientRow(Base):
    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("task_id", "name", name="uq_clients_task_name"),)

    # Integer key: the join order, which is the stable order slots are given in.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"), index=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    joined_at: Mapped[float] = mapped_column(Float)
    lease_until: Mapped[float] = mapped_column(Float)  # unix seconds; 0 after Leave
    last_seen: Mapped[float] = mapped_column(Float)
    last_digest_round: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RoundRow(Base):
    """One attempt at a round. Abandoned attempts stay; at most one attempt of a round commits."""

    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("task_id", "round", "attempt", name="uq_rounds_task_round_attempt"),
        Index(
            "uq_rounds_one_commit",
            "task_id",
            "round",
            unique=True,
            sqlite_where=text("status = 'committed'"),
            postgresql_where=text("status = 'committed'"),
        ),
        Index(
            "uq_rounds_one_open",
            "task_id",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"))
    round: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    opened_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float] = mapped_column(Float)
    scalar_scale: Mapped[float] = mapped_column(Float)  # a byte b of this attempt carries b * scalar_scale
    group_size: Mapped[int] = mapped_column(Integer)
    # JSON list of seed lists, one per group: what the attempt asked for.
    group_seeds: Mapped[str] = mapped_column(Text)
    hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # ledger.round_payload
    submissions_counted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mean_loss: Mapped[float | None] = mapped_column(Float, nullable=True)


class AssignmentRow(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("round_id", "client_id", name="uq_assignments_round_client"),
        UniqueConstraint("round_id", "slot", name="uq_assignments_round_slot"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id"))
    slot: Mapped[int] = mapped_column(Integer)


class SubmissionRow(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        # One submission per client and slot of an attempt: a retry can never count twice.
        UniqueConstraint("round_id", "client_id", "slot", name="uq_submissions_round_client_slot"),
        Index("ix_submissions_task_round", "task_id", "round"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(64))
    round: Mapped[int] = mapped_column(BigInteger)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id"))
    slot: Mapped[int] = mapped_column(Integer)
    scalars: Mapped[bytes] = mapped_column(LargeBinary)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[float] = mapped_column(Float)
    examples: Mapped[int] = mapped_column(Integer, server_default=text("0"))  # claimed; 0: not said


class LedgerEntryRow(Base):
    __tablename__ = "ledger_entries"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"), primary_key=True)
    round: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    seed: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)


class SeedStatRow(Base):
    """FedKSeed-Pro: running mean of the absolute aggregated scalar per seed."""

    __tablename__ = "seed_stats"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"), primary_key=True)
    seed: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sum_abs: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(BigInteger)


class DigestReportRow(Base):
    __tablename__ = "digest_reports"
    __table_args__ = (UniqueConstraint("task_id", "client_id", "round", name="uq_digest_reports_task_client_round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.task_id"))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.client_id"))
    round: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    reported_at: Mapped[float] = mapped_column(Float)


class TokenRow(Base):
    """Client tokens: only the sha256 of a token is stored (see tokens.py)."""

    __tablename__ = "tokens"
    __table_args__ = (
        # A name is unique among tokens that are not revoked.
        Index(
            "uq_tokens_active_name",
            "name",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
