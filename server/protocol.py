"""Conversions between the events of a task's rounds and the seedfed.v1 messages."""

from __future__ import annotations

from functools import lru_cache

from seedfed.server.rounds import OpenEvent
from seedfed.shared.ledger import RoundRecord
from seedfed.shared.wire import commit_message
from seedfed.v1 import coordinator_pb2 as pb


@lru_cache(maxsize=256)
def commit_event(rec: RoundRecord) -> pb.SyncEvent:
    # One message object shared by every stream the commit goes to.
    return pb.SyncEvent(commit=commit_message(rec))


def open_event(ev: OpenEvent) -> pb.SyncEvent:
    plan = ev.plan
    return pb.SyncEvent(
        open=pb.RoundOpen(
            round=plan.round,
            slot=ev.slot,
            seeds=plan.seeds_of_slot(ev.slot),
            deadline_unix=plan.deadline,
            lr=plan.lr,
            scalar_scale=plan.scalar_scale,
        )
    )


def caught_up(head_round: int, head_hash: bytes) -> pb.SyncEvent:
    return pb.SyncEvent(caught_up=pb.CaughtUp(head_round=head_round, head_hash=head_hash))
