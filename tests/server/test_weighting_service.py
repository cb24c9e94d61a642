"""Weighting by examples behind a real coordinator: each report carries its
client's claimed example count, the claim is stored with the submission, and
every committed round recomputes from what was stored. A task weighted by
examples refuses a report without a claim, and the refusal changes nothing."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coord_helpers import audit, client, coordinator, make_spec, run

from seedfed.shared.wire import reason_of
from seedfed.v1 import coordinator_pb2 as pb

ROUNDS = 6
CLAIMS = {"small": 10, "mid": 30, "large": 1_000_000}  # large's claim counts as 4 x the median (120)


def test_claims_are_stored_and_every_round_recomputes(store) -> None:  # noqa: ANN001
    spec = make_spec(min_clients=len(CLAIMS), local_steps=2, weighting="examples")

    async def scenario() -> None:
        async with coordinator(store, [spec]) as (_, stub):
            clients = [client(stub, name, spec, examples=n) for name, n in CLAIMS.items()]
            await asyncio.wait_for(asyncio.gather(*(c.run(ROUNDS) for c in clients)), 60)

    run(scenario())
    assert audit(store, spec) >= ROUNDS
    names = {c.client_id: c.name for c in store.get_clients(spec.task_id)}
    for r in range(1, ROUNDS + 1):
        _, submissions = store.committed_submissions(spec.task_id, r)
        assert {names[s.client_id]: s.examples for s in submissions} == CLAIMS


@pytest.mark.parametrize("weighting", ["examples", "equal"])
def test_a_report_without_a_claim_is_refused_only_where_claims_count(weighting: str) -> None:
    from seedfed.server.memory_store import MemoryStore

    spec = make_spec(min_clients=1, weighting=weighting)

    async def scenario() -> None:
        async with coordinator(MemoryStore(), [spec]) as (_, stub):
            c = client(stub, "a", spec, auto_submit=False)
            await c.join()
            follow = asyncio.get_running_loop().create_task(c.sync())
            while not c.opens:
                await asyncio.sleep(0.02)
            round_no, slot, seeds = c.opens[0]
            unclaimed = pb.SubmitRequest(
                task_id=spec.task_id, client_id=c.client_id, round=round_no, slot=slot, scalars=b"\x01" * len(seeds)
            )
            if weighting == "examples":
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Submit(unclaimed, timeout=5)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(err.value) == "examples"
                assert "examples >= 1" in err.value.details()
                # nothing was taken: a report with a claim is the first, not a duplicate
                claimed = pb.SubmitRequest()
                claimed.CopyFrom(unclaimed)
                claimed.examples = 5
                assert (await stub.Submit(claimed, timeout=5)).received == 1
            else:
                assert (await stub.Submit(unclaimed, timeout=5)).received == 1
            follow.cancel()

    run(scenario())
