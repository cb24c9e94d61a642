"""Conversions between the engine's records and the seedfed.v1 messages."""

from __future__ import annotations

from functools import lru_cache

from seedfed.server.engine import OpenEvent
from seedfed.shared.ledger import RoundRecord
from seedfed.v1 import coordinator_pb2 as pb


def round_commit(rec: RoundRecord) -> pb.RoundCommit:
    return pb.RoundCommit(round=rec.round, seeds=rec.seeds, steps=rec.steps, hash=rec.hash)


def record_of(msg: pb.RoundCommit) -> RoundRecord:
    return RoundRecord(msg.round, tuple(msg.seeds), tuple(msg.steps), bytes(msg.hash))


@lru_cache(maxsize=256)
def commit_event(rec: RoundRecord) -> pb.SyncEvent:
    # One message object shared by every stream the commit goes to.
    return pb.SyncEvent(commit=round_commit(rec))


def open_event(ev: OpenEvent) -> pb.SyncEvent:
    plan = ev.plan
    return pb.SyncEvent(
        open=pb.RoundOpen(round=plan.round, slot=ev.slot, seeds=plan.seeds_of_slot(ev.slot), deadline_unix=plan.deadline, lr=plan.lr)
    )


def caught_up(head_round: int, head_hash: bytes) -> pb.SyncEvent:
    return pb.SyncEvent(caught_up=pb.CaughtUp(head_round=head_round, head_hash=head_hash))
