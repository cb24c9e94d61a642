"""Refusals: a gRPC status code, a message for people, and a short
machine-readable reason sent in the trailing metadata key ``seedfed-reason``.

Each refusal of a submission has its own status code, so a client can tell
them apart without parsing text (see docs/coordinator.md for the table).
"""

from __future__ import annotations

import grpc

from seedfed.shared.wire import REASON_KEY


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


async def abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    """End the call with the refusal's status code, message and reason trailer (never returns)."""
    await context.abort(refusal.code, refusal.message, trailing_metadata=((REASON_KEY, refusal.reason),))


def unknown_task(task_id: str) -> Refusal:
    return Refusal(grpc.StatusCode.NOT_FOUND, "unknown-task", f"no task {task_id!r} on this coordinator")


def unknown_client(client_id: str) -> Refusal:
    return Refusal(
        grpc.StatusCode.FAILED_PRECONDITION, "unknown-client", f"client {client_id!r} is not registered for this task: Join first"
    )


def late(round_no: int) -> Refusal:
    return Refusal(
        grpc.StatusCode.ABORTED, "late", f"round {round_no} is closed (committed or abandoned); the submission was not counted"
    )


def duplicate(round_no: int, slot: int) -> Refusal:
    return Refusal(
        grpc.StatusCode.ALREADY_EXISTS,
        "duplicate",
        f"a different submission for round {round_no} slot {slot} was already accepted",
    )


def wrong_round(round_no: int, open_round: int) -> Refusal:
    where = f"round {open_round} is open" if open_round else "no round is open"
    return Refusal(grpc.StatusCode.OUT_OF_RANGE, "wrong-round", f"round {round_no} is not open ({where})")


def wrong_slot(slot: int, round_no: int) -> Refusal:
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED, "wrong-slot", f"slot {slot} of round {round_no} is not assigned to this client"
    )


def not_assigned(round_no: int) -> Refusal:
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        "not-assigned",
        f"this client has no assignment in round {round_no}; it gets work from the next round",
    )


def scalar_count(got: int, want: int) -> Refusal:
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, "scalar-count", f"{got} scalars sent, the assignment has {want} seeds")


def invalid(reason: str, message: str) -> Refusal:
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def base_digest(got: str, want: str) -> Refusal:
    return Refusal(
        grpc.StatusCode.FAILED_PRECONDITION,
        "base-digest",
        f"base digest {got[:16] or '(empty)'}... does not match the genesis ({want[:16]}...)",
    )


def unavailable(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.UNAVAILABLE, "shutting-down", message)


def digest_round(round_no: int, head: int) -> Refusal:
    return Refusal(
        grpc.StatusCode.OUT_OF_RANGE, "digest-round", f"digest_round {round_no} is not a committed round (head {head})"
    )


def from_round(round_no: int, head: int) -> Refusal:
    return Refusal(grpc.StatusCode.OUT_OF_RANGE, "from-round", f"from_round {round_no} is beyond the ledger head {head} + 1")


def storage_unavailable() -> Refusal:
    return Refusal(
        grpc.StatusCode.UNAVAILABLE, "storage", "the coordinator's database did not answer; nothing was recorded, retry"
    )
