"""The seedfed.v1.Coordinator service: thin RPC handlers over each task's rounds.

Handlers meet only requests whose shape is already checked (limits.py) and
raise a Refusal for anything else; the interceptors (interception.py) turn
it into a gRPC status with the reason in the trailing metadata.
"""

from __future__ import annotations

import logging

import grpc
from sqlalchemy.exc import SQLAlchemyError

from seedfed.server import errors, protocol
from seedfed.server.coordinator import Coordinator
from seedfed.server.errors import Refusal
from seedfed.server.interception import CallInfo, Interceptor
from seedfed.server.rounds import CommitEvent, OpenEvent, StreamClosed, TaskRounds
from seedfed.server.store import StoreError
from seedfed.shared.wire import commit_message
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
CATCH_UP_CHUNK = 256  # rounds read from storage at a time during catch-up
MAX_LEDGER_ROUNDS = 1000  # rounds per GetLedger answer; ask again from the last one + 1
LEDGER_PAGE_BYTES = 4 * 1024 * 1024  # ... and fewer when they would make a larger answer


class StorageRefusals(Interceptor):
    """A call that failed on the database answers UNAVAILABLE (reason storage):
    nothing was acknowledged, and the client retries after backoff."""

    def failure(self, call: CallInfo, exc: Exception) -> Refusal | None:
        if isinstance(exc, (SQLAlchemyError, StoreError)):
            log.exception("%s failed on storage", call.method)
            return errors.storage_unavailable()
        return None


def _genesis(rounds: TaskRounds) -> pb.Genesis:
    return pb.Genesis(canonical=rounds.genesis, hash=rounds.genesis_hash)


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        rounds = await self.coordinator.rounds_of(request.task_id)
        joined = await rounds.join(request.name, request.base_digest)
        return pb.JoinResponse(
            client_id=joined.client_id,
            genesis=_genesis(rounds),
            head_round=joined.head_round,
            head_hash=joined.head_hash,
            lease_seconds=max(1, int(joined.lease_seconds)),
            first_work_round=joined.first_work_round,
        )

    async def Leave(self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext) -> pb.LeaveResponse:
        rounds = await self.coordinator.rounds_of(request.task_id)
        await rounds.leave(request.client_id)
        return pb.LeaveResponse()

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        rounds = await self.coordinator.rounds_of(request.task_id)
        head, ok, expected = rounds.heartbeat(request.client_id, request.digest_round, request.digest)
        return pb.HeartbeatResponse(head_round=head, digest_ok=ok, expected_digest=expected)

    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext) -> pb.SubmitResponse:
        rounds = await self.coordinator.rounds_of(request.task_id)
        try:
            answer = await rounds.submit(
                request.client_id, request.round, request.slot, request.scalars, request.loss, request.examples
            )
        except Refusal as r:
            self.coordinator.observer.submission(request.task_id, r.reason)
            raise
        self.coordinator.observer.submission(request.task_id, "identical" if answer.identical else "accepted")
        return pb.SubmitResponse(received=answer.received, expected=answer.expected)

    async def GetLedger(self, request: pb.GetLedgerRequest, context: grpc.aio.ServicerContext) -> pb.GetLedgerResponse:
        rounds = await self.coordinator.rounds_of(request.task_id)
        first = max(request.from_round, 1)
        last = rounds.head_round if request.to_round == 0 else min(request.to_round, rounds.head_round)
        last = min(last, first + MAX_LEDGER_ROUNDS - 1)
        page, size = [], 0
        for rec in await rounds.records(first, last):
            msg = commit_message(rec)
            size += msg.ByteSize() + 8
            if page and size > LEDGER_PAGE_BYTES:
                break
            page.append(msg)
        return pb.GetLedgerResponse(genesis=_genesis(rounds), rounds=page)

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        rounds = await self.coordinator.rounds_of(request.task_id or self.coordinator.only_task_id())
        s = rounds.status()
        return pb.StatusResponse(
            task_id=s.task_id,
            head_round=s.head_round,
            head_hash=s.head_hash,
            open_round=s.open_round,
            clients_online=s.clients_online,
            submissions_in_open_round=s.submissions_in_open_round,
            digest_round=s.digest_round,
            digest=s.digest,
            ledger_bytes=s.ledger_bytes,
            last_loss=s.last_loss or 0.0,
        )

    async def Sync(self, request: pb.SyncRequest, context: grpc.aio.ServicerContext):  # type: ignore[override]
        rounds = await self.coordinator.rounds_of(request.task_id)
        start = rounds.subscribe(request.client_id, request.from_round)
        sub = start.subscription
        try:
            # Catch-up: every commit up to the head as it was when the stream registered;
            # later commits are already waiting on the queue.
            first = max(request.from_round, 1)
            while first <= start.head_round:
                last = min(start.head_round, first + CATCH_UP_CHUNK - 1)
                for rec in await rounds.records(first, last):
                    yield protocol.commit_event(rec)
                first = last + 1
            yield protocol.caught_up(start.head_round, start.head_hash)
            if start.current_open is not None:
                yield protocol.open_event(start.current_open)
            while True:
                event = await sub.queue.get()
                if isinstance(event, StreamClosed):
                    if event.reason == "overflow":
                        raise errors.slow_consumer()
                    if event.reason == "shutdown":
                        raise errors.shutting_down("the coordinator is shutting down; Sync again shortly")
                    return
                if isinstance(event, CommitEvent):
                    if event.record.round > start.head_round:
                        yield protocol.commit_event(event.record)
                elif isinstance(event, OpenEvent):
                    yield protocol.open_event(event)
        finally:
            rounds.unsubscribe(sub)
