"""Facts of the wire that both sides must agree on, kept once: the refusal
reason trailer, message size limits, the field limits of requests, and the
conversions between ledger records and seedfed.v1 messages (including the
verification of a genesis a client receives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from seedfed.shared.ledger import LedgerError, RoundRecord
from seedfed.shared.taskspec import TASK_ID_PATTERN, TASK_ID_RULE, TaskSpec, genesis_hash_of
from seedfed.v1 import coordinator_pb2 as pb

# Every refusal carries a machine-readable reason in this trailing metadata key.
REASON_KEY = "seedfed-reason"

# The largest request is a Submit: one byte per seed (local_steps <= 4096) plus
# a few identifiers. Larger requests are refused before they are parsed.
MAX_REQUEST_BYTES = 64 * 1024
# GetLedger pages stay below this; a client accepts more, for a ledger range of many rounds.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_CLIENT_RECEIVE_BYTES = 64 * 1024 * 1024
# Metadata (the bearer token is its largest entry) stays small.
MAX_METADATA_BYTES = 16 * 1024


@dataclass(frozen=True)
class FieldLimit:
    """One request field's form, for the coordinator's checks and the clients' early ones."""

    name: str
    pattern: re.Pattern[str]
    rule: str  # for people: what a valid value looks like
    reason: str  # the refusal reason a bad value gets

    def check(self, value: str) -> bool:
        return bool(self.pattern.fullmatch(value))


# The genesis's own rule for a task id (tasks.task_id is 64 wide).
TASK_ID = FieldLimit(
    "task_id",
    TASK_ID_PATTERN,
    TASK_ID_RULE,
    "bad-task-id",
)
# A device name (clients.name is 128 wide); a token's name is one too.
CLIENT_NAME = FieldLimit(
    "name",
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}"),
    "1-128 of [A-Za-z0-9_.:@-], starting with a letter or digit",
    "bad-name",
)
CLIENT_ID = FieldLimit("client_id", re.compile(r"[A-Za-z0-9_-]{1,64}"), "1-64 of [A-Za-z0-9_-]", "bad-client-id")
DIGEST = FieldLimit("digest", re.compile(r"[0-9a-f]{64}"), "64 lowercase hex digits", "bad-digest")
FIELD_LIMITS = (TASK_ID, CLIENT_NAME, CLIENT_ID, DIGEST)


def reason_of(exc: BaseException) -> str:
    """The refusal reason a gRPC error carries in its trailing metadata, or ''."""
    try:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == REASON_KEY:
                return value if isinstance(value, str) else value.decode()
    except Exception:  # not every RpcError carries trailers
        pass
    return ""


def commit_message(rec: RoundRecord) -> pb.RoundCommit:
    return pb.RoundCommit(round=rec.round, seeds=rec.seeds, steps=rec.steps, hash=rec.hash)


def record_of(msg: pb.RoundCommit) -> RoundRecord:
    return RoundRecord(int(msg.round), tuple(int(s) for s in msg.seeds), tuple(int(q) for q in msg.steps), bytes(msg.hash))


def genesis_message(spec: TaskSpec) -> pb.Genesis:
    return pb.Genesis(canonical=spec.canonical_bytes(), hash=spec.genesis_hash())


def genesis_from(message: pb.Genesis, task_id: str) -> TaskSpec:
    """Parse and verify a received genesis: its hash, its canonical form, its task id."""
    if genesis_hash_of(message.canonical) != message.hash:
        raise LedgerError("the genesis sent by the coordinator does not match its hash")
    spec = TaskSpec.from_canonical(message.canonical)
    if spec.genesis_hash() != message.hash:
        raise LedgerError("the genesis sent by the coordinator is not in canonical form")
    if spec.task_id != task_id:
        raise LedgerError(f"asked for task {task_id!r}, the coordinator sent the genesis of {spec.task_id!r}")
    return spec
