"""The coordinator as a real process, SIGKILLed at random moments of a
scripted run and restarted on the same SQLite database every time.

At the end: every hash any client saw before any kill is still the hash of
that round; the stored history replays exactly (no submission counted twice,
assignments deterministic, the loss guard's rollbacks and halved lr rebuilt
from the stored rounds after every restart); every acknowledged submission is
in the database; the run reached its last round. It runs under the guard's
default options and under window_start with remeasure, whose restore points
and references a restart must rebuild as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import grpc
import pytest
from coord_helpers import audit, make_spec
from helpers import free_port, run
from loadclient import ScriptedClient
from sqlalchemy import select

from seedfed.client.simulate.processes import ManagedProcess, start_coordinator
from seedfed.server.db import make_engine
from seedfed.server.models import SubmissionRow
from seedfed.server.sql_store import SqlStore
from seedfed.shared.loss_guard import MAX_HALVINGS
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

KILLS = 22
ROUNDS = 400  # more than the kills leave time for; the run is finished after the last kill
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
]


async def start_process(task_file: Path, db: str, port: int) -> ManagedProcess:
    return await asyncio.to_thread(
        start_coordinator,
        db,
        task_file.parent / "coordinator.log",
        task_file=task_file,
        listen=f"127.0.0.1:{port}",
        extra_args=("--lease-seconds", "2", "--log-level", "warning"),
        timeout=30,
    )


GUARD_ROUNDS = 10


def sawtooth_loss(name: str, round_no: int) -> float:
    """Level, except every third window of the loss guard, which rises: a rollback each time."""
    noise = int.from_bytes(hashlib.sha256(f"{name}/{round_no}".encode()).digest()[:2]) / 65536 / 100
    return 1.0 + noise + (0.1 if (round_no - 1) // GUARD_ROUNDS % 3 == 2 else 0.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "guard_options",
    [{}, {"guard_return": "window_start", "guard_remeasure": True}],
    ids=["guard-defaults", "guard-window-start-remeasured"],
)
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, guard_options: dict) -> None:
    spec = make_spec(
        min_clients=2,
        local_steps=4,
        pool_size=64,
        round_deadline_s=1.5,
        max_rounds=ROUNDS,
        guard_rounds=GUARD_ROUNDS,
        **guard_options,
    )
    task_file = tmp_path / "task.toml"
    task_file.write_text(spec.to_toml())
    db = f"sqlite:///{tmp_path / 'crash.db'}"
    port = free_port()
    rng = random.Random(20261123)
    seen: dict[int, bytes] = {}  # every commit hash any client was ever sent
    kills_mid_run = 0

    async def scenario() -> list[ScriptedClient]:
        nonlocal kills_mid_run
        proc = await start_process(task_file, db, port)
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) for _ in range(3)]
        clients = [
            ScriptedClient(
                pb_grpc.CoordinatorStub(ch),
                spec.task_id,
                f"dev{i}",
                spec.base_digest,
                losses=sawtooth_loss,
                submit_delay=0.01 * (i + 1),
            )
            for i, ch in enumerate(channels)
        ]
        runs = [asyncio.create_task(c.run(ROUNDS, retry_delay=0.05)) for c in clients]

        def collect() -> None:
            for c in clients:
                for r, rec in c.commits.items():
                    assert seen.setdefault(r, rec.hash) == rec.hash, f"round {r} changed its hash"

        try:
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(0.05, 1.2))
                collect()
                if min(c.head_round for c in clients) < ROUNDS:
                    kills_mid_run += 1
                await asyncio.to_thread(proc.kill)
                proc = await start_process(task_file, db, port)
            await asyncio.wait_for(asyncio.gather(*runs), 120)
            collect()
        finally:
            for t in runs:
                t.cancel()
            await asyncio.to_thread(proc.stop)
            for ch in channels:
                await ch.close()
        return clients

    clients = run(scenario(), timeout=240)
    assert kills_mid_run >= 20

    store = SqlStore(make_engine(db))
    try:
        records = store.get_rounds(spec.task_id, 1)
        assert [r.round for r in records] == list(range(1, ROUNDS + 1))
        for r, h in seen.items():
            assert records[r - 1].hash == h, f"committed round {r} was lost or changed"
        assert audit(store, spec) == ROUNDS
        lrs = [store.committed_submissions(spec.task_id, r)[0].lr for r in range(1, ROUNDS + 1)]
        assert sorted(set(lrs), reverse=True) == [spec.lr / 2**k for k in range(MAX_HALVINGS + 1)]
        with store.engine.connect() as conn:
            stored = {(row.client_id, row.round, bytes(row.scalars)) for row in conn.execute(select(SubmissionRow))}
        for c in clients:
            for round_no, _slot, scalars in c.acks:
                assert (c.client_id, round_no, scalars) in stored, (
                    f"{c.name}: acknowledged submission for round {round_no} is not durable"
                )
    finally:
        store.close()
