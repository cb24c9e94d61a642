"""Hostile input against a live coordinator (tokens on, limits on): random and
malformed messages, raw random bytes on every method, forged credentials.

For every input: the coordinator answers with a clear status (never UNKNOWN
or INTERNAL: those are what an unhandled exception looks like), and when it
refuses the input, the ledger head hash is exactly what it was before.
Afterwards the coordinator is alive, healthy and still serving.

"Before" is taken once the coordinator has settled: a submission that was
accepted (the anchor's, for the open round) commits its round after the
answer, so a head read at once could move during the next, refused, call.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_helpers import BASE_DIGEST, ThreadedCoordinator, make_spec

from seedfed.server.tokens import open_token_store
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

SPEC = make_spec(task_id="fz", min_clients=1, local_steps=4, round_deadline_s=3600.0)
ANCHOR = "\x00anchor"  # placeholder the tests replace by the live client id
TOKEN = "\x00token"  # placeholder for the valid token

CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,  # a method the service does not have
}
METHODS = ["Join", "Leave", "Heartbeat", "Submit", "GetLedger", "Status"]


class Target:
    def __init__(self, tc: ThreadedCoordinator, token: str) -> None:
        self.tc = tc
        self.token = token
        self.channel = grpc.insecure_channel(f"127.0.0.1:{tc.port}", options=[("grpc.max_send_message_length", 4 * 1024 * 1024)])
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.md = (("authorization", f"Bearer {token}"),)
        self.anchor = self.stub.Join(
            pb.JoinRequest(task_id="fz", name="fuzzer", base_digest=BASE_DIGEST), metadata=self.md, timeout=5
        ).client_id

    def head(self) -> bytes:
        return self.stub.Status(pb.StatusRequest(task_id="fz"), metadata=self.md, timeout=5).head_hash

    def settled_head(self) -> bytes:
        """The head once no commit is due: the open round (there always is one:
        the anchor stays online) holds no submission yet."""
        deadline = time.monotonic() + 10
        while True:
            s = self.stub.Status(pb.StatusRequest(task_id="fz"), metadata=self.md, timeout=5)
            if s.open_round == s.head_round + 1 and s.submissions_in_open_round == 0:
                return s.head_hash
            assert time.monotonic() < deadline, f"the coordinator did not settle: {s}"
            time.sleep(0.01)

    def metadata(self, auth: str | None) -> tuple[tuple[str, str], ...]:
        if auth is None:
            return ()
        return (("authorization", auth.replace(TOKEN, self.token)),)


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # noqa: ANN001, ANN201
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'c.db'}"
    token = open_token_store(url).create("fuzzer")
    with ThreadedCoordinator(url, [SPEC], lease_seconds=3600.0, join_rate=50.0, join_burst=50.0) as tc:
        t = Target(tc, token)
        deadline = time.monotonic() + 10
        while t.stub.Status(pb.StatusRequest(task_id="fz"), metadata=t.md, timeout=5).open_round != 1:
            assert time.monotonic() < deadline, "round 1 did not open"
            time.sleep(0.05)
        yield t
        t.channel.close()


# -- strategies ----------------------------------------------------------------------------

u64 = st.one_of(st.sampled_from([0, 1, 2, 3, 2**32, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
u32 = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1))
text = st.one_of(
    st.sampled_from(
        ["", "fz", "nope", "a" * 64, "a" * 65, "a" * 5000, "fz\n", "../../etc/passwd", "'; DROP TABLE rounds;--", "\u202efz"]
    ),
    st.text(max_size=100),
    st.from_regex(r"[A-Za-z0-9_.:@-]{1,70}", fullmatch=True),
)
task_ids = st.one_of(st.just("fz"), text)
client_ids = st.one_of(st.just(ANCHOR), text)
scalars = st.one_of(st.binary(max_size=16), st.binary(min_size=4, max_size=4), st.just(b"\x80\x01\x02\x03"), st.just(b"\x01" * 4))
losses = st.floats(allow_nan=True, allow_infinity=True, width=32)
digests = st.one_of(st.just(""), st.just("ab" * 32), st.just("AB" * 32), text)
auth = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.none(),
    st.just("Bearer sfk_" + "A" * 43),
    st.just(f"Basic {TOKEN}"),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
)

requests = st.one_of(
    st.builds(
        lambda t, n, d: ("Join", pb.JoinRequest(task_id=t, name=n, base_digest=d)),
        task_ids,
        st.one_of(text, st.just("fuzzer")),
        st.one_of(st.just(BASE_DIGEST), digests),
    ),
    st.builds(lambda t, c: ("Leave", pb.LeaveRequest(task_id=t, client_id=c)), task_ids, text),  # never the anchor: it must stay
    st.builds(
        lambda t, c, r, d: ("Heartbeat", pb.HeartbeatRequest(task_id=t, client_id=c, digest_round=r, digest=d)),
        task_ids,
        client_ids,
        u64,
        digests,
    ),
    st.builds(
        lambda t, c, r, s, b, loss: ("Submit", pb.SubmitRequest(task_id=t, client_id=c, round=r, slot=s, scalars=b, loss=loss)),
        task_ids,
        client_ids,
        st.one_of(st.just(1), u64),
        st.one_of(st.just(0), u32),
        scalars,
        losses,
    ),
    st.builds(lambda t, a, b: ("GetLedger", pb.GetLedgerRequest(task_id=t, from_round=a, to_round=b)), task_ids, u64, u64),
    st.builds(lambda t: ("Status", pb.StatusRequest(task_id=t)), task_ids),
    st.builds(lambda t, c, r: ("Sync", pb.SyncRequest(task_id=t, client_id=c, from_round=r)), task_ids, client_ids, u64),
)


def _fill(request, anchor: str):  # noqa: ANN001, ANN202
    if getattr(request, "client_id", None) == ANCHOR:
        request.client_id = anchor
    return request


def _call(target: Target, method: str, request, metadata) -> tuple[grpc.StatusCode, str, str]:  # noqa: ANN001
    try:
        if method == "Sync":
            call = target.stub.Sync(request, metadata=metadata, timeout=0.3)
            try:
                for i, _ in enumerate(call):
                    if i > 50:
                        break
            finally:
                call.cancel()
            return grpc.StatusCode.OK, "", ""
        getattr(target.stub, method)(request, metadata=metadata, timeout=5)
        return grpc.StatusCode.OK, "", ""
    except grpc.RpcError as exc:
        code = exc.code()
        if method == "Sync" and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return grpc.StatusCode.OK, "", ""  # an open stream, waiting for the next round: fine
        reason = dict(exc.trailing_metadata() or ()).get("seedfed-reason", "")
        return code, exc.details() or "", reason


def _check(target: Target, before: bytes, outcome: tuple[grpc.StatusCode, str, str], what: str) -> None:
    code, details, _ = outcome
    assert code in CLEAR, f"{what}: answered {code} {details!r}"
    if code != grpc.StatusCode.OK:
        assert details, f"{what}: {code} without a message"
        assert target.head() == before, f"{what}: refused with {code}, yet the ledger head moved"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests, auth_value=auth)
def test_random_messages(target: Target, req, auth_value) -> None:  # noqa: ANN001
    method, request = req
    request = _fill(request, target.anchor)
    before = target.settled_head()
    outcome = _call(target, method, request, target.metadata(auth_value))
    _check(target, before, outcome, f"{method}({request!s:.200}) auth={auth_value!r:.40}")
    if auth_value != f"Bearer {TOKEN}":
        assert outcome[0] == grpc.StatusCode.UNAUTHENTICATED or outcome[0] == grpc.StatusCode.UNIMPLEMENTED


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    path=st.one_of(
        st.sampled_from([f"/seedfed.v1.Coordinator/{m}" for m in METHODS]),
        st.sampled_from(["/seedfed.v1.Coordinator/Nope", "/x/y", "/grpc.health.v1.Health/Check"]),
    ),
    payload=st.one_of(st.binary(max_size=2048), st.just(b"\xff" * 64), st.just(b"\x0a\x05\xff\xfe\xfd\xfc\xfb")),
    with_token=st.booleans(),
)
def test_raw_bytes(target: Target, path: str, payload: bytes, with_token: bool) -> None:
    before = target.settled_head()
    call = target.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        call(payload, metadata=target.md if with_token else (), timeout=5)
        outcome = (grpc.StatusCode.OK, "", "")
    except grpc.RpcError as exc:
        outcome = (exc.code(), exc.details() or "", "")
    _check(target, before, outcome, f"raw {path} {payload[:40]!r}")


def test_raw_bytes_on_the_stream(target: Target) -> None:
    call = target.channel.unary_stream("/seedfed.v1.Coordinator/Sync", request_serializer=None, response_deserializer=None)
    for payload in (b"\xff\xff\xff", b"\x0a\x03\xc3\x28\x00", b"\x18" + b"\xff" * 11):
        with pytest.raises(grpc.RpcError) as err:
            list(call(payload, metadata=target.md, timeout=2))
        assert err.value.code() in CLEAR, err.value


def test_still_serving_afterwards(target: Target) -> None:
    assert target.tc.alive()
    health = health_pb2_grpc.HealthStub(target.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    rounds = target.tc.live.rounds
    assert rounds._driver is not None and not rounds._driver.done()
    # The anchor can still do its work: its assignment is accepted or was already done.
    status = target.stub.Status(pb.StatusRequest(task_id="fz"), metadata=target.md, timeout=5)
    assert status.task_id == "fz"
