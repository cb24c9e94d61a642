"""A round transition that fails in the store: the task's rounds take the store's
state again and go on; clients miss nothing; failing writes are UNAVAILABLE."""

from __future__ import annotations

import asyncio

import grpc
from coord_helpers import audit, client, coordinator, make_spec
from helpers import run, wait_until_async
from sqlalchemy.exc import OperationalError

from seedfed.server.memory_store import MemoryStore
from seedfed.shared.wire import reason_of
from seedfed.v1 import coordinator_pb2 as pb


class FlakyStore(MemoryStore):
    """Fails chosen commits: before writing, or after writing (the answer is lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_before = {2}
        self.fail_after = {3}
        self.fail_batches = 0

    def commit_round(self, task_id, round_no, attempt, result, now):  # noqa: ANN001, ANN201
        if round_no in self.fail_before:
            self.fail_before.discard(round_no)
            raise OperationalError("commit", {}, Exception("database is locked"))
        super().commit_round(task_id, round_no, attempt, result, now)
        if round_no in self.fail_after:
            self.fail_after.discard(round_no)
            raise OperationalError("commit", {}, Exception("connection lost after commit"))

    def write_batch(self, batch):  # noqa: ANN001, ANN201
        if self.fail_batches and batch.submissions:
            self.fail_batches -= 1
            raise OperationalError("insert", {}, Exception("disk I/O error"))
        return super().write_batch(batch)


def test_failed_commits_recover_and_clients_miss_nothing() -> None:
    spec = make_spec(min_clients=2)
    store = FlakyStore()

    async def scenario() -> None:
        async with coordinator(store, [spec]) as (running, stub):
            a, b = client(stub, "a", spec), client(stub, "b", spec)
            for x in (a, b):
                await x.join()
            await asyncio.wait_for(asyncio.gather(a.run(5), b.run(5)), 30)
            assert [r for r in sorted(a.commits)] == [1, 2, 3, 4, 5]
            assert audit(store, spec) >= 5
            assert not store.fail_before and not store.fail_after  # both failures happened

    run(scenario(), 60)


def test_a_failed_submission_write_is_unavailable_and_retryable() -> None:
    spec = make_spec(min_clients=1)
    store = FlakyStore()
    store.fail_batches = 1

    async def scenario() -> None:
        async with coordinator(store, [spec]) as (running, stub):
            c = client(stub, "c", spec, auto_submit=False)
            await c.join()
            task = asyncio.create_task(c.sync())
            await wait_until_async(lambda: c.opens, what="round 1 to open")
            round_no, slot, seeds = c.opens[0]
            try:
                await c.submit(round_no, slot, bytes(len(seeds)))
                raise AssertionError("expected UNAVAILABLE")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and reason_of(exc) == "storage"
            assert store.get_open_round(spec.task_id).submissions == {}
            ok = await c.submit(round_no, slot, bytes(len(seeds)))  # the retry goes through
            assert (ok.received, ok.expected) == (1, 1)
            await wait_until_async(lambda: c.head_round == 1, what="the commit")
            task.cancel()

    run(scenario(), 60)


def test_a_failed_leave_keeps_the_lease_renewal_it_held_back() -> None:
    """Leave drops a queued lease renewal before writing (so it cannot revive the
    lease afterwards); when the write fails, the renewal is queued again."""
    spec = make_spec(min_clients=2)  # no round opens: only leases change

    class LeaveFails(FlakyStore):
        def leave_client(self, task_id, client_id, now):  # noqa: ANN001, ANN201
            raise OperationalError("update", {}, Exception("disk I/O error"))

    store = LeaveFails()

    async def scenario() -> None:
        async with coordinator(store, [spec], lease_seconds=600.0) as (running, stub):
            c = client(stub, "c", spec, auto_submit=False)
            await c.join()
            joined_lease = store.get_clients(spec.task_id)[0].lease_until
            await asyncio.sleep(0.05)
            await stub.Heartbeat(pb.HeartbeatRequest(task_id=spec.task_id, client_id=c.client_id), timeout=5)
            renewed = running.coordinator.rounds[spec.task_id].clients[c.client_id].lease_until
            assert renewed > joined_lease
            try:
                await stub.Leave(pb.LeaveRequest(task_id=spec.task_id, client_id=c.client_id), timeout=5)
                raise AssertionError("expected UNAVAILABLE")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and reason_of(exc) == "storage"
            await wait_until_async(
                lambda: store.get_clients(spec.task_id)[0].lease_until == renewed, what="the renewal to be written"
            )
            assert (await stub.Status(pb.StatusRequest(task_id=spec.task_id), timeout=5)).clients_online == 1

    run(scenario(), 60)
