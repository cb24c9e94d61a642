"""Builders shared by the coordinator tests."""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any

import grpc
from helpers import run  # noqa: F401 - re-exported to the coordinator tests
from loadclient import BASE_DIGEST, ScriptedClient, make_spec  # noqa: F401 - re-exported to the coordinator tests

from seedfed.server.app import RunningCoordinator, start_coordinator
from seedfed.server.rounds import RoundsConfig
from seedfed.shared.taskspec import TaskSpec
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc


@asynccontextmanager
async def coordinator(store, specs: list[TaskSpec], lease_seconds: float = 5.0, tick: float = 0.05):  # noqa: ANN001
    running: RunningCoordinator = await start_coordinator(
        "", "127.0.0.1:0", tasks=specs, config=RoundsConfig(lease_seconds=lease_seconds, tick_seconds=tick), store=store
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield running, pb_grpc.CoordinatorStub(channel)
    finally:
        await channel.close()
        await running.stop(grace=0.5)


def client(stub: pb_grpc.CoordinatorStub, name: str, spec: TaskSpec, **kw: Any) -> ScriptedClient:
    return ScriptedClient(stub, spec.task_id, name, spec.base_digest, **kw)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def audit(store, spec: TaskSpec) -> int:  # noqa: ANN001
    """Replay the stored history with round_math.recompute: every committed
    round's plan must be what plan_round gives for its clients, and its record
    what compute_commit gives for its stored submissions (so no submission
    counted twice or lost), earlier rounds threaded through as the coordinator
    ran them. Returns the number of rounds checked."""
    from seedfed.shared.ledger import verify_chain
    from seedfed.shared.round_math import CommittedRound, recompute

    records = store.get_rounds(spec.task_id, 1)
    verify_chain(spec.genesis_hash(), records)
    stored = [CommittedRound(*store.committed_submissions(spec.task_id, rec.round)) for rec in records]
    for rec, (done, plan, result) in zip(records, recompute(spec, stored, spec.genesis_hash()), strict=True):
        assert done.plan == plan, f"round {rec.round}: stored plan differs from the deterministic one"
        subs = done.submissions
        assert len({s.client_id for s in subs}) == len(subs), f"round {rec.round}: a client counted twice"
        for s in subs:
            assert plan.slots[s.slot] == s.client_id, f"round {rec.round}: submission in a slot not its own"
        assert result.record == rec, f"round {rec.round}: record differs from its stored submissions"
    return len(records)
