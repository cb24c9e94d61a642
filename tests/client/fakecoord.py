"""A small in-process coordinator for client tests: serves a fixed ledger, can
tamper with a record or deny a digest, and records what clients asked for.

Not the product's coordinator: it only speaks enough of the protocol to drive
the client through catch-up, live rounds and the refusal paths.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc

from seedfed.shared.ledger import RoundRecord, make_record
from seedfed.shared.taskspec import TaskSpec
from seedfed.shared.wire import commit_message, genesis_message  # commit_message: re-exported to the client tests
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc


def synthetic_ledger(
    spec: TaskSpec, rounds: int, seeds_per_round: int = 4, seed: int = 0, first: int = 1, previous: bytes | None = None
) -> list[RoundRecord]:
    """Committed-looking rounds with small integer steps on seeds of the task's pool."""
    import random

    rng = random.Random(seed)
    head = spec.genesis_hash() if previous is None else previous
    out = []
    pool = spec.pool_size or 2**32
    for r in range(first, first + rounds):
        entries = {}
        while len(entries) < seeds_per_round:
            entries[rng.randrange(pool)] = rng.choice([-3, -2, -1, 1, 2, 3])
        rec = make_record(head, r, entries)
        out.append(rec)
        head = rec.hash
    return out


class FakeCoordinator(pb_grpc.CoordinatorServicer):
    def __init__(self, spec: TaskSpec, records: list[RoundRecord]) -> None:
        self.spec = spec
        self.records = list(records)
        self.tampered: dict[int, int] = {}  # round -> how many more times to send it with a wrong hash
        self.deny_digest: dict[int, int] = {}  # round -> how many more digest reports of it to answer digest_ok=False
        self.syncs: list[int] = []
        self.heartbeats: list[tuple[int, str]] = []
        self.submits: list[pb.SubmitRequest] = []
        self.joins: list[str] = []
        self.left: list[str] = []
        self.live: queue.Queue[pb.SyncEvent] = queue.Queue()
        self._lock = threading.Lock()

    def _genesis(self) -> pb.Genesis:
        return genesis_message(self.spec)

    def head(self) -> tuple[int, bytes]:
        if not self.records:
            return 0, self.spec.genesis_hash()
        return self.records[-1].round, self.records[-1].hash

    def Join(self, request, context):
        self.joins.append(request.name)
        r, h = self.head()
        return pb.JoinResponse(
            client_id=f"id-{request.name}",
            genesis=self._genesis(),
            head_round=r,
            head_hash=h,
            lease_seconds=30,
            first_work_round=r + 1,
        )

    def Leave(self, request, context):
        self.left.append(request.client_id)
        return pb.LeaveResponse()

    def Heartbeat(self, request, context):
        ok = True
        if request.digest_round:
            self.heartbeats.append((request.digest_round, request.digest))
            if self.deny_digest.get(request.digest_round, 0) > 0:
                self.deny_digest[request.digest_round] -= 1
                ok = False
        return pb.HeartbeatResponse(head_round=self.head()[0], digest_ok=ok, expected_digest="" if ok else "0" * 64)

    def GetLedger(self, request, context):
        to = request.to_round or self.head()[0]
        rounds = [commit_message(r) for r in self.records if request.from_round <= r.round <= to]
        return pb.GetLedgerResponse(genesis=self._genesis(), rounds=rounds)

    def Submit(self, request, context):
        self.submits.append(request)
        return pb.SubmitResponse(received=1, expected=1)

    def Sync(self, request, context):
        self.syncs.append(request.from_round)
        for rec in [r for r in self.records if r.round >= request.from_round]:
            bad = None
            with self._lock:
                if self.tampered.get(rec.round, 0) > 0:
                    self.tampered[rec.round] -= 1
                    bad = bytes(32)
            msg = commit_message(rec)
            if bad is not None:
                msg.hash = bad
            yield pb.SyncEvent(commit=msg)
        r, h = self.head()
        yield pb.SyncEvent(caught_up=pb.CaughtUp(head_round=r, head_hash=h))
        while context.is_active():
            try:
                yield self.live.get(timeout=0.1)
            except queue.Empty:
                pass

    def Status(self, request, context):
        r, h = self.head()
        return pb.StatusResponse(task_id=self.spec.task_id, head_round=r, head_hash=h)


class Served:
    def __init__(self, servicer: FakeCoordinator) -> None:
        self.servicer = servicer
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_CoordinatorServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)
