"""The loss guard behind a real coordinator: clients that lie about their loss.

Honest clients report a level loss under noise; liars report a loss that
soars in every other window of the guard. With the liars a minority, the
round's loss is the median of the reports and no window rises, so the run
keeps its lr and commits its own steps; with the liars a majority it rolls
back. Either way every committed round recomputes from what was stored.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from coord_helpers import audit, client, coordinator, make_spec, run

from seedfed.server.memory_store import MemoryStore

GUARD_ROUNDS, ROUNDS = 4, 24


def honest_loss(name: str, round_no: int) -> float:
    return 0.7 + int.from_bytes(hashlib.sha256(f"{name}/{round_no}".encode()).digest()[:2]) / 65536 / 10


def lying_loss(name: str, round_no: int) -> float:
    return 1e6 if (round_no - 1) // GUARD_ROUNDS % 2 else honest_loss(name, round_no)


@pytest.mark.parametrize(("guard_return", "remeasure"), [("window_end", False), ("window_start", False), ("window_start", True)])
@pytest.mark.parametrize(("honest", "liars", "rolls_back"), [(4, 2, False), (2, 4, True)])
def test_a_lying_minority_cannot_trigger_a_rollback(
    honest: int, liars: int, rolls_back: bool, guard_return: str, remeasure: bool
) -> None:
    guard = {"guard_rounds": GUARD_ROUNDS, "guard_return": guard_return, "guard_remeasure": remeasure}
    spec = make_spec(min_clients=honest + liars, local_steps=2, **guard)
    store = MemoryStore()

    async def scenario() -> None:
        async with coordinator(store, [spec]) as (_, stub):
            clients = [client(stub, f"h{i}", spec, losses=honest_loss) for i in range(honest)]
            clients += [client(stub, f"l{i}", spec, losses=lying_loss) for i in range(liars)]
            await asyncio.wait_for(asyncio.gather(*(c.run(ROUNDS) for c in clients)), 60)

    run(scenario())
    assert audit(store, spec) >= ROUNDS
    lrs = {store.committed_submissions(spec.task_id, r)[0].lr for r in range(1, ROUNDS + 1)}
    assert (min(lrs) < spec.lr) is rolls_back, lrs
