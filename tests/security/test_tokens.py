"""Client tokens: created once, stored as a hash, required on every RPC but
health, and refused at once after revocation, on open streams too."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import run
from sec_helpers import BASE_DIGEST, aio_channel, hardened, make_spec, stub

from seedfed.server.auth import bearer_token
from seedfed.server.tokens import TokenError, TokenStore, open_token_store, token_hash
from seedfed.shared.cli import cli
from seedfed.shared.wire import reason_of
from seedfed.v1 import coordinator_pb2 as pb


def test_cli_create_prints_once_and_stores_only_the_hash(tmp_path) -> None:  # noqa: ANN001
    db = tmp_path / "c.db"
    runner = CliRunner()
    created = runner.invoke(cli, ["token", "create", "--name", "phone-1", "--db", f"sqlite:///{db}"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("sfk_") and len(token) >= 4 + 43  # 256 bits, url-safe base64
    assert "not shown again" in created.stderr
    raw = db.read_bytes() + (db.with_name("c.db-wal").read_bytes() if db.with_name("c.db-wal").exists() else b"")
    assert token.encode() not in raw
    rows = sqlite3.connect(db).execute("select name, token_hash, revoked_at from tokens").fetchall()
    assert rows == [("phone-1", hashlib.sha256(token.encode()).digest(), None)]

    listed = runner.invoke(cli, ["token", "list", "--db", f"sqlite:///{db}"])
    assert listed.exit_code == 0 and "phone-1" in listed.stdout and "active" in listed.stdout and token not in listed.stdout

    again = runner.invoke(cli, ["token", "create", "--name", "phone-1", "--db", f"sqlite:///{db}"])
    assert again.exit_code != 0 and "revoke it first" in again.output

    revoked = runner.invoke(cli, ["token", "revoke", "phone-1", "--db", f"sqlite:///{db}"])
    assert revoked.exit_code == 0, revoked.output
    assert runner.invoke(cli, ["token", "revoke", "phone-1", "--db", f"sqlite:///{db}"]).exit_code != 0
    # A revoked name can be given a new token.
    assert runner.invoke(cli, ["token", "create", "--name", "phone-1", "--db", f"sqlite:///{db}"]).exit_code == 0


def test_db_comes_from_the_coordinator_environment(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    db = tmp_path / "env.db"
    monkeypatch.setenv("SEEDFED_COORDINATOR_DB", f"sqlite:///{db}")
    result = CliRunner().invoke(cli, ["token", "create", "--name", "a"], auto_envvar_prefix="SEEDFED")
    assert result.exit_code == 0, result.output
    assert db.exists()


def test_bad_names_are_refused(db_url) -> None:  # noqa: ANN001
    store = open_token_store(db_url)
    for name in ("", "a b", "-x", "x" * 65, "ä", "a\nb"):
        with pytest.raises(TokenError):
            store.create(name)


def test_bearer_parsing() -> None:
    assert bearer_token([("authorization", "Bearer abc")]) == "abc"
    assert bearer_token([("authorization", "bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer " + "x" * 500)]) is None
    assert bearer_token([("x-other", "Bearer abc")]) is None
    assert bearer_token(None) is None


def test_every_rpc_but_health_needs_a_valid_token(db_url) -> None:  # noqa: ANN001
    store: TokenStore = open_token_store(db_url)
    good = store.create("device-a")
    spec = make_spec()

    async def main() -> None:
        async with hardened(db_url, [spec]) as live:
            async with (
                aio_channel(live.port) as anon,
                aio_channel(live.port, token="sfk_wrong") as wrong,
                aio_channel(live.port, token=good) as ok,
            ):
                health = await health_pb2_grpc.HealthStub(anon).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                calls = [
                    ("Join", pb.JoinRequest(task_id="sec", name="device-a", base_digest=BASE_DIGEST)),
                    ("Status", pb.StatusRequest(task_id="sec")),
                    ("GetLedger", pb.GetLedgerRequest(task_id="sec")),
                    ("Heartbeat", pb.HeartbeatRequest(task_id="sec", client_id="x")),
                    ("Submit", pb.SubmitRequest(task_id="sec", client_id="x", round=1, scalars=b"\x01")),
                    ("Leave", pb.LeaveRequest(task_id="sec", client_id="x")),
                ]
                for channel, reason in ((anon, "no-token"), (wrong, "bad-token")):
                    for method, request in calls:
                        with pytest.raises(grpc.aio.AioRpcError) as err:
                            await getattr(stub(channel), method)(request, timeout=5)
                        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
                        assert reason_of(err.value) == reason
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        async for _ in stub(channel).Sync(pb.SyncRequest(task_id="sec", client_id="x", from_round=1)):
                            pass
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                joined = await stub(ok).Join(pb.JoinRequest(task_id="sec", name="device-a", base_digest=BASE_DIGEST), timeout=5)
                assert joined.client_id
                assert (await stub(ok).Status(pb.StatusRequest(task_id="sec"), timeout=5)).task_id == "sec"

    run(main())


def test_new_token_works_at_once_and_revocation_ends_open_streams(db_url) -> None:  # noqa: ANN001
    store = open_token_store(db_url)
    spec = make_spec(min_clients=2)  # no round opens: the stream stays idle, waiting

    async def main() -> None:
        async with hardened(db_url, [spec], auth_refresh=0.2) as live:
            token = store.create("device-b")  # after the coordinator loaded its cache
            async with aio_channel(live.port, token=token) as ch:
                s = stub(ch)
                joined = await s.Join(pb.JoinRequest(task_id="sec", name="device-b", base_digest=BASE_DIGEST), timeout=5)
                call = s.Sync(pb.SyncRequest(task_id="sec", client_id=joined.client_id, from_round=1))
                first = await call.read()
                assert first.WhichOneof("event") == "caught_up"
                t0 = time.monotonic()
                assert store.revoke("device-b") == 1
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while True:
                        msg = await call.read()
                        assert msg is not grpc.aio.EOF, "the stream ended without an error"
                waited = time.monotonic() - t0
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert reason_of(err.value) == "token-revoked"
                assert waited < 2.0, f"the revoked stream stayed open {waited:.2f}s"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await s.Status(pb.StatusRequest(task_id="sec"), timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert live.rounds.streams_open() == 0

    run(main())


def test_a_token_is_one_device(db_url) -> None:  # noqa: ANN001
    """A token joins only under its own name and speaks only for its own client."""
    store = open_token_store(db_url)
    alice, mallory = store.create("alice"), store.create("mallory")

    async def main() -> None:
        async with hardened(db_url, [make_spec(min_clients=3)]) as live:
            async with aio_channel(live.port, token=alice) as a, aio_channel(live.port, token=mallory) as m:
                joined = await stub(a).Join(pb.JoinRequest(task_id="sec", name="alice", base_digest=BASE_DIGEST), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as err:  # posing as alice to get her client id
                    await stub(m).Join(pb.JoinRequest(task_id="sec", name="alice", base_digest=BASE_DIGEST), timeout=5)
                assert (err.value.code(), reason_of(err.value)) == (grpc.StatusCode.PERMISSION_DENIED, "name-not-token")
                theirs = [
                    ("Heartbeat", pb.HeartbeatRequest(task_id="sec", client_id=joined.client_id)),
                    ("Submit", pb.SubmitRequest(task_id="sec", client_id=joined.client_id, round=1, scalars=b"\x01" * 4)),
                    ("Leave", pb.LeaveRequest(task_id="sec", client_id=joined.client_id)),
                ]
                for method, request in theirs:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await getattr(stub(m), method)(request, timeout=5)
                    assert (err.value.code(), reason_of(err.value)) == (grpc.StatusCode.PERMISSION_DENIED, "not-your-client"), (
                        method
                    )
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in stub(m).Sync(pb.SyncRequest(task_id="sec", client_id=joined.client_id, from_round=1)):
                        pass
                assert reason_of(err.value) == "not-your-client"
                assert (
                    await stub(a).Heartbeat(pb.HeartbeatRequest(task_id="sec", client_id=joined.client_id), timeout=5)
                ).head_round == 0

    run(main())


def test_token_hash_is_sha256_of_the_token() -> None:
    assert token_hash("sfk_abc") == hashlib.sha256(b"sfk_abc").digest()


@pytest.mark.postgres
def test_token_store_on_postgresql(postgres_url) -> None:  # noqa: ANN001
    import uuid

    from sqlalchemy import text

    from seedfed.server.db import make_engine, upgrade_to_head

    schema = f"seedfed_tokens_{uuid.uuid4().hex[:10]}"
    admin = make_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        engine = make_engine(postgres_url, schema=schema)
        upgrade_to_head(engine)
        store = TokenStore(engine)
        token = store.create("pg-device")
        assert store.active() == {token_hash(token): "pg-device"}
        with pytest.raises(TokenError):
            store.create("pg-device")
        assert store.revoke("pg-device") == 1 and store.active() == {}
        store.create("pg-device")  # a revoked name gets a new token
        assert [t.active for t in store.list()] == [False, True]
        engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
