"""Bounds on what a peer can send: field shapes, message size, Join floods."""

from __future__ import annotations

import grpc
import pytest
from helpers import run
from sec_helpers import BASE_DIGEST, aio_channel, hardened, make_spec, stub

from seedfed.server.errors import Refusal, check_field
from seedfed.server.limits import TRANSPORT_METADATA_BYTES, TRANSPORT_REQUEST_BYTES, PeerLimiter, TokenBucket, peer_host
from seedfed.server.tokens import open_token_store
from seedfed.shared.wire import CLIENT_ID, CLIENT_NAME, MAX_METADATA_BYTES, MAX_REQUEST_BYTES, TASK_ID, reason_of
from seedfed.v1 import coordinator_pb2 as pb


@pytest.mark.parametrize("value", ["", "-a", "a b", "a/b", "x" * 65, "é", "a\x00", "a\n"])
def test_task_ids_are_bounded(value) -> None:  # noqa: ANN001
    with pytest.raises(Refusal) as r:
        check_field(TASK_ID, value)
    assert (r.value.code, r.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "bad-task-id")


@pytest.mark.parametrize("value", ["", " x", "x" * 129, "a\tb", "\u202eevil", "a;drop"])
def test_names_are_bounded(value) -> None:  # noqa: ANN001
    with pytest.raises(Refusal) as r:
        check_field(CLIENT_NAME, value)
    assert r.value.reason == "bad-name"


def test_good_values_pass() -> None:
    check_field(TASK_ID, "sst2.run-1")
    check_field(CLIENT_NAME, "client-1")
    check_field(CLIENT_NAME, "pixel7@home:2")
    check_field(CLIENT_ID, "3f9a0c_d1-e2")


def test_token_bucket_refills() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.5)  # one token back after half a second at 2/s
    assert not b.take(0.5)


def test_peer_limiter_forgets_old_peers() -> None:
    lim = PeerLimiter(rate=1.0, burst=1.0, max_peers=2)
    assert lim.allow("a", 0.0) and not lim.allow("a", 0.0)
    assert lim.allow("b", 0.0) and lim.allow("c", 0.0)  # "a" is forgotten now
    assert lim.allow("a", 0.0)


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:10.0.0.1:5555") == peer_host("ipv4:10.0.0.1:6666") == "10.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"


def test_join_floods_get_resource_exhausted(db_url) -> None:  # noqa: ANN001
    async def main() -> None:
        async with hardened(db_url, [make_spec()], auth=False, join_rate=0.5, join_burst=3) as live:
            async with aio_channel(live.port) as ch:
                s = stub(ch)
                codes = []
                for i in range(6):
                    try:
                        await s.Join(pb.JoinRequest(task_id="sec", name=f"flood-{i}", base_digest=BASE_DIGEST), timeout=5)
                        codes.append("OK")
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code().name)
                        assert reason_of(exc) == "rate-limited"
                assert codes == ["OK"] * 3 + ["RESOURCE_EXHAUSTED"] * 3
                # Other RPCs are not limited by the Join bucket.
                assert (await s.Status(pb.StatusRequest(task_id="sec"), timeout=5)).task_id == "sec"

    run(main())


def test_malformed_fields_are_refused_before_the_rounds(db_url) -> None:  # noqa: ANN001
    cases = [
        ("Join", pb.JoinRequest(task_id="sec", name="bad name", base_digest=BASE_DIGEST), "bad-name"),
        ("Join", pb.JoinRequest(task_id="sec", name="ok", base_digest="XYZ"), "bad-digest"),
        ("Join", pb.JoinRequest(task_id="../etc", name="ok", base_digest=BASE_DIGEST), "bad-task-id"),
        ("Heartbeat", pb.HeartbeatRequest(task_id="sec", client_id="a" * 65), "bad-client-id"),
        ("Heartbeat", pb.HeartbeatRequest(task_id="sec", client_id="abc", digest_round=1, digest="nothex"), "bad-digest"),
        ("Submit", pb.SubmitRequest(task_id="sec", client_id="a b", round=1), "bad-client-id"),
        ("GetLedger", pb.GetLedgerRequest(task_id="x" * 200), "bad-task-id"),
    ]

    async def main() -> None:
        async with hardened(db_url, [make_spec()], auth=False) as live:
            async with aio_channel(live.port) as ch:
                s = stub(ch)
                for method, request, reason in cases:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await getattr(s, method)(request, timeout=5)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, reason)
                    assert reason_of(err.value) == reason
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in s.Sync(pb.SyncRequest(task_id="sec", client_id="not valid!")):
                        pass
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(main())


def _submit_of_size(size: int) -> pb.SubmitRequest:
    """A Submit of exactly ``size`` bytes on the wire."""
    n = size
    while (request := pb.SubmitRequest(task_id="sec", client_id="abc", round=1, scalars=b"\x01" * n)).ByteSize() > size:
        n -= 1
    assert request.ByteSize() == size
    return request


def test_oversize_requests_and_metadata_are_refused_with_a_reason(db_url) -> None:  # noqa: ANN001
    """Above the limits and below gRPC's transport caps: RESOURCE_EXHAUSTED with a
    reason. Beyond the caps gRPC refuses by itself, without one (docs/security.md)."""
    token = open_token_store(db_url).create("big")

    async def main() -> None:
        async with hardened(db_url, [make_spec()]) as live:
            options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
            async with aio_channel(live.port, token=token, options=options) as ch:
                s = stub(ch)

                async def outcome(call) -> tuple[str, str]:  # noqa: ANN001
                    try:
                        await call
                    except grpc.aio.AioRpcError as exc:
                        return exc.code().name, reason_of(exc)
                    return "OK", ""

                # At the limit the request is read (and refused for what it says); one byte more is too large.
                assert await outcome(s.Submit(_submit_of_size(MAX_REQUEST_BYTES), timeout=5)) == (
                    "FAILED_PRECONDITION",
                    "unknown-client",
                )
                assert await outcome(s.Submit(_submit_of_size(MAX_REQUEST_BYTES + 1), timeout=5)) == (
                    "RESOURCE_EXHAUSTED",
                    "too-large",
                )
                assert await outcome(s.Submit(_submit_of_size(TRANSPORT_REQUEST_BYTES), timeout=5)) == (
                    "RESOURCE_EXHAUSTED",
                    "too-large",
                )
                assert await outcome(s.Submit(_submit_of_size(TRANSPORT_REQUEST_BYTES + 1), timeout=5)) == (
                    "RESOURCE_EXHAUSTED",
                    "",
                )

                status = pb.StatusRequest(task_id="sec")
                pad = "x-pad"  # metadata counts name + value + 32 per entry; the token's entry is counted too
                assert await outcome(s.Status(status, metadata=((pad, "a" * 1000),), timeout=5)) == ("OK", "")
                for size in (MAX_METADATA_BYTES + 1, TRANSPORT_METADATA_BYTES - 1000):
                    got = await outcome(s.Status(status, metadata=((pad, "a" * size),), timeout=5))
                    assert got == ("RESOURCE_EXHAUSTED", "metadata-too-large"), size
                got = await outcome(s.Status(status, metadata=((pad, "a" * (TRANSPORT_METADATA_BYTES + 1)),), timeout=5))
                assert got == ("RESOURCE_EXHAUSTED", "")
                # Streams too.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in s.Sync(
                        pb.SyncRequest(task_id="sec", client_id="abc"), metadata=((pad, "a" * 20_000),), timeout=5
                    ):
                        pass
                assert (err.value.code(), reason_of(err.value)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "metadata-too-large")
                # The server is fine afterwards.
                assert (await s.Status(status, timeout=5)).task_id == "sec"

    run(main())
