"""Bounds on everything a peer can send: metadata and message sizes, field
shapes, and the rate of Join calls.

The coordinator faces the public internet, so every request is checked
before it reaches a task's rounds or the database, and a refusal is a gRPC
status with a machine-readable reason (trailing metadata ``seedfed-reason``),
never an unhandled exception. gRPC itself is let accept somewhat more than
the limits (``TRANSPORT_OPTIONS``), so that what lies between gets a reason;
only beyond the transport's own caps does gRPC refuse by itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import grpc

from seedfed.server import errors
from seedfed.server.errors import Refusal
from seedfed.server.interception import CallInfo, Interceptor
from seedfed.shared.wire import CLIENT_ID, CLIENT_NAME, DIGEST, MAX_METADATA_BYTES, MAX_REQUEST_BYTES, TASK_ID

# gRPC's own caps, above the limits: beyond them the transport refuses
# (RESOURCE_EXHAUSTED, no reason trailer), between them and the limits we do.
TRANSPORT_REQUEST_BYTES = 1024 * 1024
TRANSPORT_METADATA_BYTES = 4 * MAX_METADATA_BYTES
TRANSPORT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", TRANSPORT_REQUEST_BYTES),
    # soft = hard: between the two gRPC would refuse at random
    ("grpc.max_metadata_size", TRANSPORT_METADATA_BYTES),
    ("grpc.absolute_max_metadata_size", TRANSPORT_METADATA_BYTES),
]
# What HTTP/2 counts per metadata entry beyond its name and value (RFC 7540, 6.5.2).
METADATA_ENTRY_OVERHEAD = 32

COORDINATOR_PREFIX = "/seedfed.v1.Coordinator/"


def metadata_bytes(metadata: tuple[tuple[str, str | bytes], ...]) -> int:
    return sum(len(k) + len(v) + METADATA_ENTRY_OVERHEAD for k, v in metadata)


def check_request(method: str, request: Any) -> None:  # noqa: ANN401 - a seedfed.v1 request message
    """The field shapes of a Coordinator request, from the wire's table; each
    task's rounds check the rest against live state (round and slot current,
    scalar count = assignment)."""
    task_id = getattr(request, "task_id", None)
    if task_id is not None:
        errors.check_field(TASK_ID, task_id, optional=method == "Status")  # Status may name no task
    client_id = getattr(request, "client_id", None)
    if client_id is not None:
        errors.check_field(CLIENT_ID, client_id)
    if method == "Join":
        errors.check_field(CLIENT_NAME, request.name)
        errors.check_field(DIGEST, request.base_digest)
    elif method == "Heartbeat":
        errors.check_field(DIGEST, request.digest, optional=True)  # no report with this heartbeat


class Unparsed:
    """Stands in for a request that was not parsed: too large, or bytes that do
    not parse, so the call gets a clear refusal instead of gRPC's generic
    INTERNAL."""

    def __init__(self, size: int, refusal: Refusal) -> None:
        self.size, self.refusal = size, refusal

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf name, for byte counters
        return self.size


def _guarded(deserializer):  # noqa: ANN001, ANN202
    if deserializer is None:
        return None

    def parse(data: bytes):  # noqa: ANN202
        if len(data) > MAX_REQUEST_BYTES:
            return Unparsed(
                len(data), Refusal(errors.TOO_LARGE, f"the request is {len(data)} bytes; at most {MAX_REQUEST_BYTES}")
            )
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, invalid UTF-8 in a string field, ...
            return Unparsed(
                len(data), Refusal(errors.MALFORMED, f"the request is not a valid message ({exc.__class__.__name__})")
            )

    return parse


class RequestLimits(Interceptor):
    """Every call of the server: metadata size before anything is parsed, then
    request size, parsability and, on the Coordinator's methods, field shapes."""

    async def open(self, call: CallInfo) -> CallInfo:
        size = metadata_bytes(call.metadata)
        if size > MAX_METADATA_BYTES:
            raise Refusal(errors.METADATA_TOO_LARGE, f"the request metadata is {size} bytes; at most {MAX_METADATA_BYTES}")
        return call

    def deserializer(self, inner):  # noqa: ANN001, ANN201
        return _guarded(inner)

    async def admit(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN401
        if isinstance(request, Unparsed):
            raise request.refusal
        if call.method.startswith(COORDINATOR_PREFIX):
            check_request(call.method[len(COORDINATOR_PREFIX) :], request)


# -- Join flood limiting


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class PeerLimiter:
    """One token bucket per peer address; the least recently seen peers are
    forgotten beyond ``max_peers`` so a spray of source addresses cannot grow
    memory without bound (a forgotten peer starts again with a full bucket)."""

    rate: float = 2.0
    burst: float = 10.0
    max_peers: int = 65_536

    def __post_init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, peer: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(peer)
            if bucket is None:
                bucket = self._buckets[peer] = TokenBucket(self.rate, self.burst, now)
                while len(self._buckets) > self.max_peers:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(peer)
            return bucket.take(now)

    def check(self, peer: str) -> None:
        if not self.allow(peer_host(peer)):
            raise Refusal(errors.RATE_LIMITED, "too many Join calls from this address; retry later")


def peer_host(peer: str) -> str:
    """The address part of a grpc peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``):
    the port changes with every connection, so it must not key the bucket."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        host = peer[5:].rsplit(":", 1)[0]
        return host.strip("[]")
    return peer  # unix sockets and anything else: the whole string


class JoinRateLimit(Interceptor):
    """A token bucket per peer address on Join."""

    def __init__(self, limiter: PeerLimiter | None = None) -> None:
        self.limiter = limiter or PeerLimiter()

    def covers(self, method: str) -> bool:
        return method == COORDINATOR_PREFIX + "Join"

    async def admit(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN401
        self.limiter.check(context.peer())
