"""The seedfed.v1.Coordinator service: thin RPC handlers over the engines.

Handlers validate the request's shape, hand it to the task's engine and turn
a Refusal into a gRPC status with the reason in the trailing metadata.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from seedfed.server import errors, protocol
from seedfed.server.coordinator import Coordinator
from seedfed.server.rounds import CommitEvent, OpenEvent, StreamClosed
from seedfed.server.store import StoreError
from seedfed.shared.wire import commit_message
from seedfed.v1 import coordinator_pb2 as pb
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")
CATCH_UP_CHUNK = 256  # rounds read from storage at a time during catch-up
MAX_LEDGER_ROUNDS = 1000  # rounds per GetLedger answer; ask again from the last one + 1
LEDGER_PAGE_BYTES = 4 * 1024 * 1024  # ... and fewer when they would make a larger answer
MAX_ID = 128


abort = errors.abort


def refusals(handler: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Unary handlers: a Refusal becomes its status code plus the seedfed-reason trailer."""

    @functools.wraps(handler)
    async def wrapper(self: CoordinatorServicer, request, context):  # type: ignore[no-untyped-def]
        try:
            return await handler(self, request, context)
        except errors.Refusal as r:
            await abort(context, r)
        except (SQLAlchemyError, StoreError):
            # Nothing was acknowledged; the client retries after backoff.
            log.exception("%s failed on storage", handler.__name__)
            await abort(context, errors.storage_unavailable())
        raise AssertionError("unreachable")  # abort raises

    return wrapper


def _check_ids(*values: str) -> None:
    for v in values:
        if len(v) > MAX_ID:
            raise errors.invalid("field-length", f"identifier longer than {MAX_ID} characters")


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    @refusals
    async def Join(self, request: pb.JoinRequest, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        _check_ids(request.task_id)
        engine = await self.coordinator.engine(request.task_id)
        joined = await engine.join(request.name, request.base_digest)
        return pb.JoinResponse(
            client_id=joined.client_id,
            genesis=pb.Genesis(canonical=engine.genesis, hash=engine.genesis_hash),
            head_round=joined.head_round,
            head_hash=joined.head_hash,
            lease_seconds=max(1, int(joined.lease_seconds)),
            first_work_round=joined.first_work_round,
        )

    @refusals
    async def Leave(self, request: pb.LeaveRequest, context: grpc.aio.ServicerContext) -> pb.LeaveResponse:
        _check_ids(request.task_id, request.client_id)
        engine = await self.coordinator.engine(request.task_id)
        await engine.leave(request.client_id)
        return pb.LeaveResponse()

    @refusals
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        _check_ids(request.task_id, request.client_id)
        engine = await self.coordinator.engine(request.task_id)
        head, ok, expected = engine.heartbeat(request.client_id, request.digest_round, request.digest)
        return pb.HeartbeatResponse(head_round=head, digest_ok=ok, expected_digest=expected)

    @refusals
    async def Submit(self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext) -> pb.SubmitResponse:
        _check_ids(request.task_id, request.client_id)
        engine = await self.coordinator.engine(request.task_id)
        try:
            received, expected = await engine.submit(
                request.client_id, request.round, request.slot, request.scalars, request.loss
            )
        except errors.Refusal as r:
            self.coordinator.observer.submission(request.task_id, r.reason)
            raise
        self.coordinator.observer.submission(request.task_id, "accepted")
        return pb.SubmitResponse(received=received, expected=expected)

    @refusals
    async def GetLedger(self, request: pb.GetLedgerRequest, context: grpc.aio.ServicerContext) -> pb.GetLedgerResponse:
        _check_ids(request.task_id)
        engine = await self.coordinator.engine(request.task_id)
        first = max(request.from_round, 1)
        last = engine.head_round if request.to_round == 0 else min(request.to_round, engine.head_round)
        last = min(last, first + MAX_LEDGER_ROUNDS - 1)
        page, size = [], 0
        for rec in await engine.records(first, last):
            msg = commit_message(rec)
            size += msg.ByteSize() + 8
            if page and size > LEDGER_PAGE_BYTES:
                break
            page.append(msg)
        return pb.GetLedgerResponse(genesis=pb.Genesis(canonical=engine.genesis, hash=engine.genesis_hash), rounds=page)

    @refusals
    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        _check_ids(request.task_id)
        engine = await self.coordinator.engine(request.task_id or await self.coordinator.only_task_id())
        s = engine.status()
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
        try:
            _check_ids(request.task_id, request.client_id)
            engine = await self.coordinator.engine(request.task_id)
            start = engine.subscribe(request.client_id)
        except errors.Refusal as r:
            await abort(context, r)
            return
        except (SQLAlchemyError, StoreError):
            log.exception("Sync failed on storage")
            await abort(context, errors.storage_unavailable())
            return
        sub = start.subscription
        try:
            first = max(request.from_round, 1)
            if first > start.head_round + 1:
                await abort(context, errors.from_round(request.from_round, start.head_round))
                return
            # Catch-up: every commit up to the head as it was when the stream registered;
            # later commits are already waiting on the queue.
            while first <= start.head_round:
                last = min(start.head_round, first + CATCH_UP_CHUNK - 1)
                try:
                    records = await engine.records(first, last)
                except (SQLAlchemyError, StoreError):
                    log.exception("catch-up read failed")
                    await abort(context, errors.storage_unavailable())
                    return
                for rec in records:
                    yield protocol.commit_event(rec)
                first = last + 1
            yield protocol.caught_up(start.head_round, start.head_hash)
            if start.current_open is not None:
                yield protocol.open_event(start.current_open)
            while True:
                event = await sub.queue.get()
                if isinstance(event, StreamClosed):
                    if event.reason == "overflow":
                        await abort(
                            context,
                            errors.Refusal(
                                grpc.StatusCode.RESOURCE_EXHAUSTED, "slow-consumer", "the stream fell too far behind; Sync again"
                            ),
                        )
                    elif event.reason == "shutdown":
                        await abort(context, errors.unavailable("the coordinator is shutting down; Sync again shortly"))
                    return
                if isinstance(event, CommitEvent):
                    if event.record.round > start.head_round:
                        yield protocol.commit_event(event.record)
                elif isinstance(event, OpenEvent):
                    yield protocol.open_event(event)
        finally:
            engine.unsubscribe(sub)
