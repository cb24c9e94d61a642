"""The coordinator over real gRPC on loopback, with torch-free scripted clients."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coord_helpers import audit, client, coordinator, make_spec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import run, wait_until_async

from seedfed.server.memory_store import MemoryStore
from seedfed.shared.assignment import uniform_seeds
from seedfed.shared.ledger import verify_chain
from seedfed.shared.wire import reason_of, record_of
from seedfed.v1 import coordinator_pb2 as pb


async def ledger(stub, spec) -> list:  # noqa: ANN001
    resp = await stub.GetLedger(pb.GetLedgerRequest(task_id=spec.task_id))
    assert resp.genesis.hash == spec.genesis_hash()
    return [record_of(r) for r in resp.rounds]


async def refusal(coro) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), reason_of(info.value)


def test_full_run_with_clients_joining_and_leaving(sql_store) -> None:  # noqa: ANN001
    spec = make_spec(min_clients=2, group_size=2, local_steps=4, pool_size=64, aggregation="median")

    async def scenario() -> None:
        async with coordinator(sql_store, [spec]) as (running, stub):
            a, b, c = (client(stub, n, spec) for n in "abc")
            first = [asyncio.create_task(x.run(6)) for x in (a, b, c)]
            await asyncio.gather(*first)
            await c.leave()  # c goes; the rounds stop waiting for it
            d = client(stub, "d", spec)
            joined = await d.join()
            assert joined.head_round >= 6 and joined.genesis.hash == spec.genesis_hash()
            await asyncio.gather(a.run(14), b.run(14), d.run(14))
            e = client(stub, "e", spec)  # a latecomer catches up over Sync alone
            await e.join()
            await e.sync(until_round=14)

            records = await ledger(stub, spec)
            head_hash = verify_chain(spec.genesis_hash(), records)
            assert len(records) >= 14
            for x in (a, b, d, e):
                for r, rec in x.commits.items():
                    assert records[r - 1] == rec
            assert e.commits[14].hash == records[13].hash and d.commits[14] == records[13]
            # a joining client gets work only from the next round opened after it joined
            assert min(r for r, _, _ in d.opens) >= joined.first_work_round
            assert not [r for r, _, _ in c.opens if r > max(c.commits) + 1]
            # assignments: the stored plans are the deterministic ones, and each client was told its own
            assert audit(sql_store, spec) == len(records)
            for x in (a, b, c, d):
                for r, slot, seeds in x.opens:
                    assert seeds == tuple(
                        uniform_seeds(spec.task_seed, r, slot // spec.group_size, spec.local_steps, spec.pool_size)
                    )
            status = await stub.Status(pb.StatusRequest(task_id=spec.task_id))
            assert status.head_round >= len(records) and status.ledger_bytes > 0
            assert head_hash == records[-1].hash

    run(scenario())


def test_refusals_have_distinct_statuses_and_change_nothing() -> None:
    spec = make_spec(min_clients=2, local_steps=3)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec]) as (running, stub):
            a, b = client(stub, "a", spec, auto_submit=False), client(stub, "b", spec, auto_submit=False)
            await a.join()
            await b.join()
            syncs = [asyncio.create_task(x.sync()) for x in (a, b)]
            await wait_until_async(lambda: a.opens and b.opens, what="round 1 to open")
            (r, slot_a, _), (_, slot_b, _) = a.opens[0], b.opens[0]
            assert r == 1 and {slot_a, slot_b} == {0, 1}
            good = bytes([1, 2, 3])
            ok = await a.submit(1, slot_a, good)
            assert (ok.received, ok.expected) == (1, 2)
            before = (await ledger(stub, spec), store.get_open_round(spec.task_id))

            def req(**kw) -> pb.SubmitRequest:  # noqa: ANN003
                base = dict(task_id=spec.task_id, client_id=a.client_id, round=1, slot=slot_a, scalars=good)
                return pb.SubmitRequest(**{**base, **kw})

            got = {
                "unknown-task": await refusal(stub.Submit(req(task_id="nope"))),
                "unknown-client": await refusal(stub.Submit(req(client_id="ghost"))),
                "wrong-round": await refusal(stub.Submit(req(round=2))),
                "wrong-slot": await refusal(stub.Submit(req(slot=slot_b))),
                "scalar-count": await refusal(stub.Submit(req(scalars=b"\x01\x02"))),
                "duplicate": await refusal(stub.Submit(req(scalars=bytes([3, 2, 1])))),
            }
            again = await a.submit(1, slot_a, good)  # an identical retry is acknowledged, not counted
            assert (again.received, again.expected) == (1, 2)
            assert (await ledger(stub, spec), store.get_open_round(spec.task_id)) == before

            await b.submit(1, slot_b, bytes([5, 5, 5]))
            await wait_until_async(lambda: a.head_round == 1, what="round 1 to commit")
            after_commit = await ledger(stub, spec)
            got["late"] = await refusal(stub.Submit(req(scalars=bytes([9, 9, 9]))))
            assert await ledger(stub, spec) == after_commit
            assert audit(store, spec) == len(after_commit)
            for x in syncs:
                x.cancel()

            for reason, (code, sent_reason) in got.items():
                assert sent_reason == reason, (reason, code, sent_reason)
            codes = [code for code, _ in got.values()]
            assert len(set(codes)) == len(codes), f"status codes are not distinct: {got}"
            assert got["late"][0] == grpc.StatusCode.ABORTED and got["duplicate"][0] == grpc.StatusCode.ALREADY_EXISTS

    run(scenario())


def test_deadline_commits_without_a_silent_or_gone_client() -> None:
    spec = make_spec(min_clients=2, round_deadline_s=1.0)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec], lease_seconds=0.3) as (running, stub):
            a, b = client(stub, "a", spec), client(stub, "b", spec)
            silent = client(stub, "silent", spec, auto_submit=False)
            for x in (silent, a, b):
                await x.join()
            silent_sync = asyncio.create_task(silent.sync())  # online, assigned, never submits
            await asyncio.gather(a.run(3), b.run(3))
            attempts = {x.round: x for x in store.round_attempts(spec.task_id) if x.status == "committed"}
            plan2, subs2 = store.committed_submissions(spec.task_id, 2)
            assert silent.client_id in plan2.slots and silent.client_id not in {s.client_id for s in subs2}
            assert len(subs2) == 2
            assert attempts[2].closed_at - attempts[2].opened_at >= spec.round_deadline_s - 0.05  # waited for the deadline

            silent_sync.cancel()  # now it is gone (its lease lapsed long ago): nothing waits for it
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(a.run(6), b.run(6))
            assert loop.time() - t0 < spec.round_deadline_s * 2.5, "rounds waited for a gone client"  # waiting would take >= 3 s
            for r in (5, 6):
                plan, subs = store.committed_submissions(spec.task_id, r)
                assert silent.client_id not in plan.slots and len(subs) == 2
            assert audit(store, spec) >= 6

    run(scenario())


def test_abandoned_attempt_reopens_the_same_round_number() -> None:
    spec = make_spec(min_clients=2, round_deadline_s=0.4)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec], lease_seconds=30) as (running, stub):
            a, b = client(stub, "a", spec), client(stub, "b", spec, auto_submit=False)
            await a.join()
            await b.join()
            ta = asyncio.create_task(a.run(3))
            tb = asyncio.create_task(b.sync())
            await wait_until_async(
                lambda: any(x.status == "abandoned" for x in store.round_attempts(spec.task_id)), what="an abandoned attempt"
            )
            assert store.head(spec.task_id)[0] == 0
            b.auto_submit = True  # b answers from the next attempt on
            await ta
            attempts = [(x.round, x.attempt, x.status) for x in store.round_attempts(spec.task_id)]
            assert attempts[0] == (1, 1, "abandoned")
            committed = [x for x in attempts if x[2] == "committed"]
            assert [x[0] for x in committed] == [1, 2, 3][: len(committed)]
            assert [r.round for r in await ledger(stub, spec)] == list(range(1, len(committed) + 1))
            # b was told about every attempt of round 1
            assert [r for r, _, _ in b.opens].count(1) == sum(1 for x in attempts if x[0] == 1)
            assert audit(store, spec) == len(committed)
            tb.cancel()

    run(scenario())


def test_join_heartbeat_digests_and_sync_rules() -> None:
    spec = make_spec(min_clients=3)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec]) as (running, stub):
            code, reason = await refusal(stub.Join(pb.JoinRequest(task_id=spec.task_id, name="x", base_digest="00" * 32)))
            assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "base-digest")
            code, reason = await refusal(stub.Join(pb.JoinRequest(task_id="nope", name="x", base_digest=spec.base_digest)))
            assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "unknown-task")
            xs = [client(stub, n, spec) for n in ("a", "b", "c")]
            first = await xs[0].join()
            again = await client(stub, "a", spec).join()
            assert again.client_id == first.client_id and first.first_work_round == 1 and first.lease_seconds >= 1
            await asyncio.gather(*(x.join() for x in xs[1:]))
            await asyncio.gather(*(x.run(2) for x in xs))
            good, bad = "11" * 32, "22" * 32
            assert (await xs[0].heartbeat(1, good)).digest_ok
            assert (await xs[1].heartbeat(1, good)).digest_ok
            hb = await xs[2].heartbeat(1, bad)
            assert not hb.digest_ok and hb.expected_digest == good and hb.head_round >= 2
            code, reason = await refusal(xs[2].heartbeat(99, good))
            assert (code, reason) == (grpc.StatusCode.OUT_OF_RANGE, "digest-round")
            code, reason = await refusal(stub.Heartbeat(pb.HeartbeatRequest(task_id=spec.task_id, client_id="ghost")))
            assert reason == "unknown-client"
            status = await stub.Status(pb.StatusRequest())
            assert (status.digest_round, status.digest) == (1, good) and status.clients_online == 3
            # Sync from beyond the head is refused; GetLedger pages by range
            call = stub.Sync(pb.SyncRequest(task_id=spec.task_id, client_id=first.client_id, from_round=50))
            code, reason = await refusal(call.read())
            assert (code, reason) == (grpc.StatusCode.OUT_OF_RANGE, "from-round")
            part = await stub.GetLedger(pb.GetLedgerRequest(task_id=spec.task_id, from_round=2, to_round=2))
            assert [r.round for r in part.rounds] == [2]
            health = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
            resp = await health.Check(health_pb2.HealthCheckRequest(service="seedfed.v1.Coordinator"))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING

    run(scenario())


def test_restart_serves_the_same_open_round(sqlite_url: str) -> None:
    from seedfed.server.db import make_engine, upgrade_to_head
    from seedfed.server.sql_store import SqlStore

    spec = make_spec(min_clients=3, round_deadline_s=60)

    def fresh_store() -> SqlStore:
        engine = make_engine(sqlite_url)
        upgrade_to_head(engine)
        return SqlStore(engine)

    async def scenario() -> None:
        async with coordinator(fresh_store(), [spec]) as (running, stub):
            a, b = client(stub, "a", spec), client(stub, "b", spec)
            c = client(stub, "c", spec, auto_submit=False)
            for x in (a, b, c):
                await x.join()
            tasks = [asyncio.create_task(x.sync()) for x in (a, b, c)]
            await wait_until_async(lambda: len(a.acks) == 1 and len(b.acks) == 1 and c.opens, what="two submissions")
            opened = c.opens[0]
            for t in tasks:
                t.cancel()
        async with coordinator(fresh_store(), [spec]) as (running, stub):
            status = await stub.Status(pb.StatusRequest(task_id=spec.task_id))
            assert (status.open_round, status.submissions_in_open_round, status.head_round) == (1, 2, 0)
            c.stub = stub
            rejoin = await c.join()  # after a restart clients rejoin; c keeps its slot in round 1
            assert rejoin.first_work_round == 1 and rejoin.client_id == c.client_id
            c.opens.clear()
            t = asyncio.create_task(c.sync())
            await wait_until_async(lambda: c.opens, what="the open round after restart")
            assert c.opens[0] == opened  # same round, slot and seeds
            await c.submit(opened[0], opened[1], bytes(len(opened[2])))
            await wait_until_async(lambda: c.head_round == 1, what="the commit")
            t.cancel()
            _, subs = running.coordinator.store.committed_submissions(spec.task_id, 1)
            assert len(subs) == 3

    run(scenario())


def test_fedkseed_pro_sampling_is_reproducible() -> None:
    spec = make_spec(min_clients=2, sampling="fedkseed_pro", pool_size=16, local_steps=6, group_size=1)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec]) as (running, stub):
            xs = [client(stub, n, spec) for n in ("a", "b")]
            for x in xs:
                await x.join()
            await asyncio.gather(*(x.run(8) for x in xs))
            assert audit(store, spec) >= 8
            assert store.seed_stats(spec.task_id)

    run(scenario())


def test_a_submission_for_an_abandoned_attempt_is_late() -> None:
    spec = make_spec(min_clients=2, round_deadline_s=0.5)

    async def scenario() -> None:
        store = MemoryStore()
        async with coordinator(store, [spec], lease_seconds=30) as (running, stub):
            x, y, z = (client(stub, n, spec, auto_submit=False) for n in "xyz")
            for c in (x, y, z):
                await c.join()
            tasks = [asyncio.create_task(c.sync()) for c in (x, y, z)]
            await wait_until_async(lambda: z.opens, what="attempt 1")
            _, old_slot, seeds = z.opens[0]
            assert old_slot == 2
            await x.leave()  # attempt 2 will have y and z in slots 0 and 1
            await wait_until_async(lambda: len(z.opens) == 2, what="attempt 2")
            assert z.opens[1][0] == 1 and z.opens[1][1] == 1
            code, reason = await refusal(z.submit(1, old_slot, bytes(len(seeds))))
            assert (code, reason) == (grpc.StatusCode.ABORTED, "late")
            code, reason = await refusal(z.submit(1, 0, bytes(len(seeds))))
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "wrong-slot")
            ok = await z.submit(1, 1, bytes(len(seeds)))
            assert (ok.received, ok.expected) == (1, 2)
            for t in tasks:
                t.cancel()

    run(scenario())
