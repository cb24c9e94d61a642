"""Refusals: a gRPC status code, a message for people, and a short
machine-readable reason sent in the trailing metadata key ``seedfed-reason``.

Every reason the coordinator can send is registered here, with its status
code, and nowhere else: a Refusal takes only a registered Reason, and
docs/coordinator.md's table of reasons is tested against ``REASONS``. Each
refusal of a submission has its own status code, so a client can tell them
apart without parsing text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import grpc

from seedfed.shared.wire import FIELD_LIMITS, REASON_KEY, FieldLimit

C = grpc.StatusCode


@dataclass(frozen=True)
class Reason:
    name: str
    code: grpc.StatusCode


REASONS: dict[str, Reason] = {}


def _reason(name: str, code: grpc.StatusCode) -> Reason:
    if name in REASONS:
        raise ValueError(f"refusal reason {name!r} registered twice")
    REASONS[name] = Reason(name, code)
    return REASONS[name]


# -- the service: tasks, clients, rounds
UNKNOWN_TASK = _reason("unknown-task", C.NOT_FOUND)
UNKNOWN_CLIENT = _reason("unknown-client", C.FAILED_PRECONDITION)
LATE = _reason("late", C.ABORTED)
DUPLICATE = _reason("duplicate", C.ALREADY_EXISTS)
WRONG_ROUND = _reason("wrong-round", C.OUT_OF_RANGE)
WRONG_SLOT = _reason("wrong-slot", C.PERMISSION_DENIED)
NOT_ASSIGNED = _reason("not-assigned", C.PERMISSION_DENIED)
SCALAR_COUNT = _reason("scalar-count", C.INVALID_ARGUMENT)
SCALAR_VALUE = _reason("scalar-value", C.INVALID_ARGUMENT)
EXAMPLES = _reason("examples", C.INVALID_ARGUMENT)
BASE_DIGEST = _reason("base-digest", C.FAILED_PRECONDITION)
FROM_ROUND = _reason("from-round", C.OUT_OF_RANGE)
DIGEST_ROUND = _reason("digest-round", C.OUT_OF_RANGE)
SLOW_CONSUMER = _reason("slow-consumer", C.RESOURCE_EXHAUSTED)
STORAGE = _reason("storage", C.UNAVAILABLE)
SHUTTING_DOWN = _reason("shutting-down", C.UNAVAILABLE)
# -- the shape of a request (limits.py): one reason per field of the wire's table
BAD_FIELD = {limit.name: _reason(limit.reason, C.INVALID_ARGUMENT) for limit in FIELD_LIMITS}
MALFORMED = _reason("malformed", C.INVALID_ARGUMENT)
TOO_LARGE = _reason("too-large", C.RESOURCE_EXHAUSTED)
METADATA_TOO_LARGE = _reason("metadata-too-large", C.RESOURCE_EXHAUSTED)
RATE_LIMITED = _reason("rate-limited", C.RESOURCE_EXHAUSTED)
# -- client tokens (auth.py)
NO_TOKEN = _reason("no-token", C.UNAUTHENTICATED)
BAD_TOKEN = _reason("bad-token", C.UNAUTHENTICATED)
TOKEN_REVOKED = _reason("token-revoked", C.UNAUTHENTICATED)
NAME_NOT_TOKEN = _reason("name-not-token", C.PERMISSION_DENIED)
NOT_YOUR_CLIENT = _reason("not-your-client", C.PERMISSION_DENIED)
STARTING = _reason("starting", C.UNAVAILABLE)


class Refusal(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        if REASONS.get(reason.name) is not reason:
            raise ValueError(f"unregistered refusal reason {reason!r}")
        super().__init__(message)
        self.code = reason.code
        self.reason = reason.name
        self.message = message


async def abort(context: grpc.aio.ServicerContext, refusal: Refusal) -> NoReturn:
    """End the call with the refusal's status code, message and reason trailer (never returns)."""
    await context.abort(refusal.code, refusal.message, trailing_metadata=((REASON_KEY, refusal.reason),))
    raise AssertionError("unreachable: abort raises")


def printable(value: str, limit: int = 40) -> str:
    """A hostile string, shortened and escaped, safe to put into a status message or a log line."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


def bad_field(limit: FieldLimit, value: str, why: str = "") -> Refusal:
    return Refusal(BAD_FIELD[limit.name], why or f"{limit.name} {printable(value)} must be {limit.rule}")


def check_field(limit: FieldLimit, value: str, *, optional: bool = False) -> str:
    """``value`` if it has the form of the wire's table (or is empty and ``optional``), else a Refusal."""
    if (optional and value == "") or limit.check(value):
        return value
    raise bad_field(limit, value)


def unknown_task(task_id: str) -> Refusal:
    return Refusal(UNKNOWN_TASK, f"no task {task_id!r} on this coordinator")


def unknown_client(client_id: str) -> Refusal:
    return Refusal(UNKNOWN_CLIENT, f"client {client_id!r} is not registered for this task: Join first")


def late(round_no: int) -> Refusal:
    return Refusal(LATE, f"round {round_no} is closed (committed or abandoned); the submission was not counted")


def duplicate(round_no: int, slot: int) -> Refusal:
    return Refusal(DUPLICATE, f"a different submission for round {round_no} slot {slot} was already accepted")


def wrong_round(round_no: int, open_round: int) -> Refusal:
    where = f"round {open_round} is open" if open_round else "no round is open"
    return Refusal(WRONG_ROUND, f"round {round_no} is not open ({where})")


def wrong_slot(slot: int, round_no: int) -> Refusal:
    return Refusal(WRONG_SLOT, f"slot {slot} of round {round_no} is not assigned to this client")


def not_assigned(round_no: int) -> Refusal:
    return Refusal(NOT_ASSIGNED, f"this client has no assignment in round {round_no}; it gets work from the next round")


def scalar_count(got: int, want: int) -> Refusal:
    return Refusal(SCALAR_COUNT, f"{got} scalars sent, the assignment has {want} seeds")


def scalar_value() -> Refusal:
    return Refusal(SCALAR_VALUE, "byte -128 is not a valid scalar (the range is -127..127)")


def examples_missing() -> Refusal:
    return Refusal(EXAMPLES, "this task weighs each report by its client's examples: send examples >= 1")


def base_digest(got: str, want: str) -> Refusal:
    return Refusal(BASE_DIGEST, f"base digest {got[:16] or '(empty)'}... does not match the genesis ({want[:16]}...)")


def shutting_down(message: str) -> Refusal:
    return Refusal(SHUTTING_DOWN, message)


def digest_round(round_no: int, head: int) -> Refusal:
    return Refusal(DIGEST_ROUND, f"digest_round {round_no} is not a committed round (head {head})")


def from_round(round_no: int, head: int) -> Refusal:
    return Refusal(FROM_ROUND, f"from_round {round_no} is beyond the ledger head {head} + 1")


def slow_consumer() -> Refusal:
    return Refusal(SLOW_CONSUMER, "the stream fell too far behind; Sync again")


def storage_unavailable() -> Refusal:
    return Refusal(STORAGE, "the coordinator's database did not answer; nothing was recorded, retry")
