"""Bounds on everything a peer can send: message sizes, field shapes, and the
rate of Join calls.

The coordinator faces the public internet, so every request field is checked
before it reaches the round engine or the database, and a refusal is a gRPC
status with a machine-readable reason (trailing metadata ``seedfed-reason``),
never an unhandled exception.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from seedfed.server.errors import Refusal, abort, invalid
from seedfed.shared.wire import MAX_METADATA_BYTES

TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the genesis's own rule
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")  # device names (clients.name is 128 wide)
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")

# -- field checks: each raises Refusal(INVALID_ARGUMENT) naming the field


def _printable(value: str, limit: int = 40) -> str:
    """A hostile string, shortened and escaped, safe to put into a status message or a log line."""
    return ascii(value[:limit]) + ("..." if len(value) > limit else "")


def check_task_id(value: str) -> str:
    if not TASK_ID_RE.fullmatch(value):
        raise invalid("bad-task-id", f"task_id {_printable(value)} must be 1-64 of [A-Za-z0-9_.-]")
    return value


def check_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise invalid("bad-name", f"name {_printable(value)} must be 1-128 of [A-Za-z0-9_.:@-], starting with a letter or digit")
    return value


def check_client_id(value: str) -> str:
    if not CLIENT_ID_RE.fullmatch(value):
        raise invalid("bad-client-id", f"client_id {_printable(value)} must be 1-64 of [A-Za-z0-9_-]")
    return value


def check_digest(value: str, field: str = "digest", optional: bool = False) -> str:
    if optional and value == "":
        return value
    if not DIGEST_RE.fullmatch(value):
        raise invalid("bad-digest", f"{field} {_printable(value)} must be 64 lowercase hex digits")
    return value


# -- transport options


def server_options() -> list[tuple[str, int]]:
    """Channel arguments beyond the service's own (app.SERVER_OPTIONS bounds
    message sizes): metadata, where the bearer token is the largest entry,
    stays small."""
    return [("grpc.max_metadata_size", MAX_METADATA_BYTES)]


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
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "rate-limited", "too many Join calls from this address; retry later"
            )


def peer_host(peer: str) -> str:
    """The address part of a grpc peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``):
    the port changes with every connection, so it must not key the bucket."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        host = peer[5:].rsplit(":", 1)[0]
        return host.strip("[]")
    return peer  # unix sockets and anything else: the whole string


# -- the interceptor that applies all of the above before a handler runs

COORDINATOR_PREFIX = "/seedfed.v1.Coordinator/"


def check_request(method: str, request) -> None:  # noqa: ANN001 - a seedfed.v1 request message
    """Shape checks common to every Coordinator RPC; the engine checks the rest
    against live state (round and slot current, scalar count = assignment)."""
    task_id = getattr(request, "task_id", None)
    if task_id is not None and not (method == "Status" and task_id == ""):  # Status may name no task
        check_task_id(task_id)
    client_id = getattr(request, "client_id", None)
    if client_id is not None:
        check_client_id(client_id)
    if method == "Join":
        check_name(request.name)
        check_digest(request.base_digest, "base_digest")
    elif method == "Heartbeat":
        check_digest(request.digest, optional=True)


class Malformed:
    """Stands in for a request whose bytes do not parse, so the call gets a
    clear INVALID_ARGUMENT instead of grpc's generic INTERNAL."""

    def __init__(self, size: int, error: str) -> None:
        self.size, self.error = size, error

    def ByteSize(self) -> int:  # noqa: N802 - the protobuf name, for byte counters
        return self.size


def _tolerant(deserializer):  # noqa: ANN001, ANN202
    if deserializer is None:
        return None

    def parse(data: bytes):  # noqa: ANN202
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, invalid UTF-8 in a string field, ...
            return Malformed(len(data), exc.__class__.__name__)

    return parse


class LimitsInterceptor(grpc.aio.ServerInterceptor):
    """Field checks on every Coordinator request and a token bucket per peer on Join."""

    def __init__(self, join_limiter: PeerLimiter | None = None) -> None:
        self.join_limiter = join_limiter or PeerLimiter()

    async def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full = handler_call_details.method or ""
        ours = full.startswith(COORDINATOR_PREFIX)  # other services (health) only get the parse guard
        method = full[len(COORDINATOR_PREFIX) :] if ours else full
        limiter = self.join_limiter if ours and method == "Join" else None

        def admit(request, context) -> None:  # noqa: ANN001
            if limiter is not None:
                limiter.check(context.peer())
            if isinstance(request, Malformed):
                raise invalid("malformed", f"the request is not a valid {method} message ({request.error})")
            if ours:
                check_request(method, request)

        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):  # noqa: ANN001
                try:
                    admit(request, context)
                except Refusal as r:
                    await abort(context, r)
                return await inner(request, context)

            return handler._replace(unary_unary=unary, request_deserializer=deserializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request, context):  # noqa: ANN001
                try:
                    admit(request, context)
                except Refusal as r:
                    await abort(context, r)
                events = inner_stream(request, context)
                try:
                    async for item in events:
                        yield item
                finally:  # close the handler's generator now, also when the peer cancels
                    await events.aclose()

            return handler._replace(unary_stream=stream, request_deserializer=deserializer)
        return handler
