"""Each attempt's one-byte scale is stored with it: a round is recomputed from
its stored submissions at the scale they were sent at, on every backend, and
rounds stored before the column existed get their genesis scale."""

from __future__ import annotations

import dataclasses
import json

from coord_helpers import make_spec
from sqlalchemy import inspect, text

from seedfed.server.db import upgrade_to_head
from seedfed.server.store import LedgerStore, PendingSubmission, WriteBatch
from seedfed.shared.round_math import compute_commit, plan_round


def test_an_attempts_scale_round_trips_and_recomputes_the_commit(store: LedgerStore) -> None:
    spec = make_spec(local_steps=2)
    store.register_task(spec, 1.0)
    ids = [store.join_client(spec.task_id, f"dev{i}", f"id{i}", 1.0, 100.0).client_id for i in range(2)]
    plan = dataclasses.replace(plan_round(spec, 1, 1, ids, {}, 10.0), scalar_scale=0.3125)
    store.open_round(plan)
    assert store.get_open_round(spec.task_id).plan == plan
    store.write_batch(
        WriteBatch(
            submissions=[PendingSubmission(spec.task_id, 1, 1, c, i, bytes([40, 0xF0]), None, 11.0) for i, c in enumerate(ids)]
        )
    )
    o = store.get_open_round(spec.task_id)
    result = compute_commit(spec, o.plan, list(o.submissions.values()), spec.genesis_hash())
    store.commit_round(spec.task_id, 1, 1, result, 12.0)
    stored_plan, subs = store.committed_submissions(spec.task_id, 1)
    assert stored_plan.scalar_scale == 0.3125
    assert compute_commit(spec, stored_plan, subs, spec.genesis_hash()).record == store.get_rounds(spec.task_id, 1)[0]
    # at the genesis scale the same bytes give another step: the stored scale is what counts
    at_genesis = dataclasses.replace(stored_plan, scalar_scale=spec.scalar_scale)
    assert compute_commit(spec, at_genesis, subs, spec.genesis_hash()).record != store.get_rounds(spec.task_id, 1)[0]


def test_rounds_stored_before_the_column_get_their_genesis_scale(engine) -> None:  # noqa: ANN001
    from alembic import command

    from seedfed.server.db import alembic_config

    def to(revision: str, down: bool = False) -> None:
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)

    def rows() -> list[tuple]:
        with engine.connect() as conn:
            return conn.execute(text("SELECT id, task_id, round, attempt, status, lr FROM rounds ORDER BY id")).all()

    to("0003")
    with engine.begin() as conn:
        for task, genesis in (("a", {"scalar_scale": 0.125}), ("b", {"scalar_scale": 2}), ("c", {})):
            conn.execute(
                text("INSERT INTO tasks (task_id, genesis, genesis_hash, created_at) VALUES (:t, :g, :h, 1)"),
                {"t": task, "g": json.dumps(genesis).encode(), "h": b"\0" * 32},
            )
            for r in (1, 2):
                conn.execute(
                    text(
                        "INSERT INTO rounds (task_id, round, attempt, status, opened_at, deadline, lr, group_size, group_seeds)"
                        " VALUES (:t, :r, 1, 'committed', 1, 2, 0.1, 0, '[]')"
                    ),
                    {"t": task, "r": r},
                )
    before = rows()
    upgrade_to_head(engine)
    with engine.connect() as conn:
        scales = dict(conn.execute(text("SELECT task_id, MIN(scalar_scale) FROM rounds GROUP BY task_id")).all())
        assert scales == dict(
            conn.execute(text("SELECT task_id, MAX(scalar_scale) FROM rounds GROUP BY task_id")).all()
        )  # one scale per task
    assert scales == {"a": 0.125, "b": 2.0, "c": 0.05}
    assert rows() == before
    to("0003", down=True)
    assert "scalar_scale" not in [c["name"] for c in inspect(engine).get_columns("rounds")]
    assert rows() == before
