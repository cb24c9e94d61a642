from __future__ import annotations

import random
import time
from concurrent import futures

import grpc
import pytest

from seedfed.client.connection import Backoff, ChannelConfig, is_retryable, open_channel
from seedfed.client.stream import EventStream
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc


def test_backoff_grows_caps_and_resets():
    b = Backoff(base=1.0, cap=8.0, floor=0.0, rng=random.Random(0))
    ceilings = [1, 2, 4, 8, 8, 8]
    delays = [b.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings))
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next_delay() <= 1.0


def test_backoff_floor():
    b = Backoff(base=0.0001, cap=0.0001, floor=0.05)
    assert b.next_delay() == 0.05


class _Servicer(pb_grpc.CoordinatorServicer):
    def __init__(self) -> None:
        self.metadata = None

    def Status(self, request, context):
        self.metadata = dict(context.invocation_metadata())
        return pb.StatusResponse(task_id=request.task_id, head_round=7)

    def Sync(self, request, context):
        for r in range(request.from_round, request.from_round + 3):
            yield pb.SyncEvent(commit=pb.RoundCommit(round=r, seeds=[1], steps=[2], hash=b"x" * 32))
        yield pb.SyncEvent(caught_up=pb.CaughtUp(head_round=request.from_round + 2))
        while context.is_active():  # a live stream that never ends by itself
            time.sleep(0.05)


@pytest.fixture()
def server():
    servicer = _Servicer()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield servicer, f"127.0.0.1:{port}"
    srv.stop(0)


def test_channel_sends_token(server):
    servicer, target = server
    channel = open_channel(ChannelConfig(target, token="s3cret"))
    resp = pb_grpc.CoordinatorStub(channel).Status(pb.StatusRequest(task_id="t"), timeout=5)
    assert resp.head_round == 7
    assert servicer.metadata["authorization"] == "Bearer s3cret"
    channel.close()


def test_channel_requires_explicit_plaintext():
    with pytest.raises(ValueError, match="TLS"):
        open_channel(ChannelConfig("127.0.0.1:1", insecure=False))


def test_event_stream_delivers_in_order_and_cancels(server):
    _, target = server
    channel = open_channel(ChannelConfig(target))
    stub = pb_grpc.CoordinatorStub(channel)
    received = []
    stream = EventStream(lambda: stub.Sync(pb.SyncRequest(task_id="t", client_id="c", from_round=5)), on_bytes=received.append)
    events = [stream.get(timeout=5) for _ in range(4)]
    assert [e.WhichOneof("event") for e in events] == ["commit"] * 3 + ["caught_up"]
    assert [e.commit.round for e in events[:3]] == [5, 6, 7]
    assert stream.get(timeout=0.2) is None  # live: nothing more yet
    assert len(received) == 4 and all(n > 0 for n in received)
    t0 = time.monotonic()
    stream.close()
    assert time.monotonic() - t0 < 5
    channel.close()


def test_event_stream_reports_unavailable():
    channel = open_channel(ChannelConfig("127.0.0.1:1"))
    stub = pb_grpc.CoordinatorStub(channel)
    stream = EventStream(lambda: stub.Sync(pb.SyncRequest(task_id="t"), timeout=5))
    ev = stream.get(timeout=10)
    assert isinstance(ev, grpc.RpcError) and is_retryable(ev)
    stream.close()
    channel.close()
