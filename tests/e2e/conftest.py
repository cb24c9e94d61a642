"""A federation of real processes for the end-to-end tests: a tiny BERT built
from a config, generated data shares, a task file, one coordinator and
clients that the tests kill, restart and add at will."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from seedfed.client.simulate.processes import ClientProcess, CoordinatorProcess, start_client, start_coordinator
from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples, write_tsv
from seedfed.client.simulate.split import iid_split
from seedfed.client.simulate.tinymodel import build_tiny_encoder
from seedfed.shared.taskspec import Objective


@dataclass
class Federation:
    root: Path
    db_url: str
    task_id: str
    shares: int
    address: str = ""
    coordinator: CoordinatorProcess | None = None
    clients: dict[str, ClientProcess] = field(default_factory=dict)
    coordinator_args: tuple[str, ...] = ("--lease-seconds", "4", "--log-level", "warning")

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def task_file(self) -> Path:
        return self.root / "task.toml"

    def data(self, i: int) -> Path:
        return self.root / "data" / f"share-{i % self.shares}.tsv"

    def start_coordinator(self) -> CoordinatorProcess:
        listen = self.address or "127.0.0.1:0"  # a restart keeps the first address
        self.coordinator = start_coordinator(
            self.db_url,
            self.root / "logs" / "coordinator.log",
            task_file=self.task_file,
            listen=listen,
            extra_args=self.coordinator_args,
        )
        self.address = self.coordinator.address
        return self.coordinator

    def start_client(self, name: str, share: int, extra: tuple[str, ...] = ()) -> ClientProcess:
        proc = start_client(
            name,
            self.address,
            self.task_id,
            self.data(share),
            self.root / "cache" / name,
            self.root / "logs",
            model=str(self.model),
            extra_args=("--checkpoint-every", "2", *extra),
        )
        self.clients[name] = proc
        return proc

    def seedfed(self, *args: str) -> subprocess.CompletedProcess:
        from seedfed.client.simulate.processes import seedfed_command

        return subprocess.run([*seedfed_command(), *args], capture_output=True, text=True, timeout=300)

    def stop_all(self) -> None:
        for c in self.clients.values():
            c.stop(timeout=20)
        if self.coordinator:
            self.coordinator.stop(timeout=20)


def build_federation(root: Path, db_url: str, *, shares: int = 3, rounds: int = 12, **genesis) -> Federation:
    from seedfed.client.genesis import genesis_for_model

    rows = make_examples(240, seed=5)
    for i, part in enumerate(iid_split(len(rows), shares, seed=5)):
        write_tsv(root / "data" / f"share-{i}.tsv", [rows[j] for j in part])
    build_tiny_encoder(root / "model", [t for t, _ in rows] + [f"a {lab} review" for lab in LABEL_NAMES], hidden=32)
    objective = Objective(kind="classification", labels=LABEL_NAMES, template="a {label} review", max_length=32)
    fields = (
        dict(
            min_clients=1,
            max_rounds=rounds,
            local_steps=2,
            batch_size=4,
            pool_size=64,
            lr=1e-3,
            round_deadline_s=4.0,
            digest_every=1,
        )
        | genesis
    )
    task_id = f"e2e-{uuid.uuid4().hex[:8]}"
    spec = genesis_for_model(str(root / "model"), task_id, objective, task_seed=77, **fields)
    (root / "task.toml").write_text(spec.to_toml())
    return Federation(root, db_url, task_id, shares)


@pytest.fixture
def federation_factory(tmp_path: Path) -> Iterator:
    made: list[Federation] = []

    def make(db_url: str | None = None, **kw) -> Federation:
        fed = build_federation(tmp_path, db_url or f"sqlite:///{tmp_path / 'coordinator.db'}", **kw)
        made.append(fed)
        return fed

    yield make
    for fed in made:
        fed.stop_all()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema (the database is shared with other runs)."""
    import sqlalchemy as sa

    schema = f"seedfed_e2e_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any driver error means no usable server
        pytest.skip(f"PostgreSQL at {postgres_url} is not usable: {exc.__class__.__name__}")
    sep = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
