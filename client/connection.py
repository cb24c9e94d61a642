"""The channel to the coordinator, and the backoff between reconnects.

All channel creation goes through ``open_channel`` so transport security and
credentials live in one place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from seedfed.shared.wire import MAX_CLIENT_RECEIVE_BYTES, MAX_REQUEST_BYTES

# Keepalive pings find a dead peer (a vanished coordinator, a dropped NAT entry)
# on an otherwise idle Sync stream. The coordinator must permit pings this often.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class ChannelConfig:
    target: str  # HOST:PORT
    token: str | None = None  # bearer token sent with every call
    tls_ca: str | None = None  # PEM file of the CA that signed the coordinator's certificate
    insecure: bool = True  # plaintext; only with an explicit choice once TLS is available
    options: Sequence[tuple[str, int | str]] = field(default_factory=tuple)


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._metadata]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def open_channel(config: ChannelConfig) -> grpc.Channel:
    options = (
        list(KEEPALIVE_OPTIONS)
        + [
            ("grpc.max_receive_message_length", MAX_CLIENT_RECEIVE_BYTES),
            # a request larger than the coordinator accepts fails here, not on the wire
            ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
        ]
        + list(config.options)
    )
    if config.tls_ca:
        with open(config.tls_ca, "rb") as fh:
            credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
        channel = grpc.secure_channel(config.target, credentials, options=options)
    elif config.insecure:
        channel = grpc.insecure_channel(config.target, options=options)
    else:
        raise ValueError("no TLS CA given: pass a CA certificate, or choose plaintext explicitly")
    if config.token:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(config.token))
    return channel


class Backoff:
    """Exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)],
    at least ``floor``; a success resets it. Jitter spreads a crowd of clients that
    lost the same coordinator, so they do not all return at the same instant."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, floor: float = 0.1, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.floor = base, cap, floor
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return max(self.floor, self._rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        self.failures = 0


# Codes that retrying cannot fix: the request itself is wrong, or this client is not allowed.
# Everything else (unavailable, a restart's unknown-client, overload, ...) is worth a new session.
FATAL = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def is_retryable(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    return code not in FATAL
