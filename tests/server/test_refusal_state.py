"""A refusal leaves every piece of state as it was: leases, who is online,
round attempts, digest reports. Real coordinator on loopback over SQLite."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coord_helpers import BASE_DIGEST, coordinator, make_spec
from helpers import run

from seedfed.server.db import make_engine, upgrade_to_head
from seedfed.server.sql_store import SqlStore
from seedfed.shared.wire import reason_of
from seedfed.v1 import coordinator_pb2 as pb

LEASE_S = 1.0
LAZY_FLUSH_S = 1.0  # writer.py writes lease renewals and digest reports at most this late


def _sqlite_store(url: str) -> SqlStore:
    engine = make_engine(url)
    upgrade_to_head(engine)
    return SqlStore(engine)


async def _status(stub, task_id: str) -> pb.StatusResponse:  # noqa: ANN001
    return await stub.Status(pb.StatusRequest(task_id=task_id), timeout=5)


async def _refused(call) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), reason_of(err.value)


def _stored_state(store: SqlStore, task_id: str) -> tuple:
    clients = [(c.client_id, c.lease_until, c.last_seen, c.last_digest_round, c.last_digest) for c in store.get_clients(task_id)]
    return clients, store.round_attempts(task_id), store.digest_rounds(task_id, 10)


def test_refusals_of_lapsed_clients_change_nothing(sqlite_url: str) -> None:
    spec = make_spec(min_clients=2, round_deadline_s=2.0)
    store = _sqlite_store(sqlite_url)

    async def scenario() -> None:
        async with coordinator(store, [spec], lease_seconds=LEASE_S) as (running, stub):
            ids = []
            for name in ("a", "b"):
                joined = await stub.Join(pb.JoinRequest(task_id=spec.task_id, name=name, base_digest=BASE_DIGEST), timeout=5)
                ids.append(joined.client_id)
            # Round 1 opens for both, nobody submits, both leases lapse, the attempt is abandoned at its deadline.
            end = asyncio.get_running_loop().time() + 15
            while True:
                status = await _status(stub, spec.task_id)
                if status.clients_online == 0 and status.open_round == 0 and store.round_attempts(spec.task_id):
                    break
                assert asyncio.get_running_loop().time() < end, f"the clients did not lapse: {status}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(LAZY_FLUSH_S + 0.3)  # whatever the writer still held is on disk now
            before = _stored_state(store, spec.task_id)

            got = []
            for cid in ids:
                for digest_round, digest in ((10**9, "a" * 64), (0, "a" * 64), (1, "")):
                    heartbeat = pb.HeartbeatRequest(task_id=spec.task_id, client_id=cid, digest_round=digest_round, digest=digest)
                    got.append(await _refused(stub.Heartbeat(heartbeat, timeout=5)))
                submit = pb.SubmitRequest(task_id=spec.task_id, client_id=cid, round=1, scalars=b"\x01" * 4)
                got.append(await _refused(stub.Submit(submit, timeout=5)))

            async def refused_sync(cid: str) -> tuple[grpc.StatusCode, str]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub.Sync(pb.SyncRequest(task_id=spec.task_id, client_id=cid, from_round=50), timeout=5):
                        pass
                return err.value.code(), reason_of(err.value)

            got += await asyncio.gather(*(refused_sync(cid) for cid in ids))

            # Give a driver that was woken, and the lazy writer, every chance to act on a change.
            await asyncio.sleep(LAZY_FLUSH_S + 0.3)
            after = await _status(stub, spec.task_id)
            assert (after.clients_online, after.open_round) == (0, 0), after
            assert _stored_state(store, spec.task_id) == before
            assert [r for _, r in got] == ["digest-round", "digest-round", "bad-digest", "late"] * 2 + ["from-round"] * 2, got
            # An accepted heartbeat does bring a client back (the test can see a change).
            await stub.Heartbeat(pb.HeartbeatRequest(task_id=spec.task_id, client_id=ids[0]), timeout=5)
            assert (await _status(stub, spec.task_id)).clients_online == 1

    try:
        run(scenario())
    finally:
        store.close()
