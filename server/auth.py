"""Bearer tokens on every RPC but health, enforced by a server interceptor.

Requests carry ``authorization: Bearer <token>`` metadata. The interceptor
checks the token's hash against an in-memory set of active tokens that a
background task reloads from the database every ``refresh_s`` seconds, so
``seedfed token revoke`` (another process, same database) takes effect
within that interval, on new calls and on open Sync streams alike: a stream
whose token is revoked ends with UNAUTHENTICATED. A token the cache does not
know triggers one early reload (rate-limited, so garbage tokens cannot
hammer the database), which lets a freshly created token work at once.

Unauthenticated requests are refused before their bytes are parsed.

A token is one device: a client joins under its token's name, and calls
about a client (Heartbeat, Submit, Sync, Leave) must carry that client's
token. One token therefore buys one slot per round, which is what robust
aggregation (median, trimmed mean) needs to bound an attacker.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from seedfed.server.errors import Refusal, abort
from seedfed.server.tokens import MAX_TOKEN_CHARS, TokenStore, fingerprint, token_hash

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
DEFAULT_REFRESH_S = 1.0
MIN_MISS_RELOAD_S = 0.25  # at most four reloads a second caused by unknown tokens


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and the hash that identifies it."""

    name: str
    token_hash: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.token_hash)


# The caller of the RPC being handled; None when auth is off.
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("seedfed_principal", default=None)


def bearer_token(metadata) -> str | None:  # noqa: ANN001 - grpc metadata: a sequence of (key, value)
    for key, value in metadata or ():
        if key == "authorization":
            if isinstance(value, bytes):
                return None
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and 0 < len(token) <= MAX_TOKEN_CHARS:
                return token.strip()
            return None
    return None


class TokenRegistry:
    """The active tokens, cached; watchers of open streams are told about revocations."""

    def __init__(self, load: Callable[[], dict[bytes, str]], refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self._load = load
        self.refresh_s = refresh_s
        self._active: dict[bytes, str] = {}
        self._watchers: dict[bytes, set[asyncio.Event]] = {}
        self._reload_lock = asyncio.Lock()
        self._last_reload = 0.0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_store(cls, store: TokenStore, refresh_s: float = DEFAULT_REFRESH_S) -> TokenRegistry:
        return cls(store.active, refresh_s)

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="token-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.reload()
            except Exception:  # a database hiccup: keep the last known set, try again
                log.exception("reloading tokens failed; keeping the previous set")

    async def reload(self, unless_since: float | None = None) -> None:
        """Reload the active set; skipped when another reload started after ``unless_since``
        (many callers waiting on one miss share one query)."""
        async with self._reload_lock:
            if unless_since is not None and self._last_reload > unless_since:
                return
            started = time.monotonic()
            active = await asyncio.to_thread(self._load)
            self._last_reload = started
            gone = set(self._active) - set(active)
            self._active = active
            for h in gone:
                log.info("token %s is no longer active; closing its streams", fingerprint(h))
                for event in self._watchers.get(h, ()):
                    event.set()

    async def authenticate(self, token: str) -> Principal | None:
        h = token_hash(token)
        name = self._active.get(h)
        if name is None:
            # Perhaps created since the last reload: reload, at most every
            # MIN_MISS_RELOAD_S, so unknown tokens wait a little rather than
            # costing a query each.
            arrived = time.monotonic()
            wait = self._last_reload + MIN_MISS_RELOAD_S - arrived
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.reload(unless_since=arrived)
            except Exception:  # the database is away: an unknown token stays unknown
                log.exception("reloading tokens failed")
            name = self._active.get(h)
        return None if name is None else Principal(name, h)

    def is_active(self, h: bytes) -> bool:
        return h in self._active

    def active_count(self) -> int:
        return len(self._active)

    def watch(self, h: bytes) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(h, set()).add(event)
        if h not in self._active:
            event.set()
        return event

    def unwatch(self, h: bytes, event: asyncio.Event) -> None:
        events = self._watchers.get(h)
        if events is not None:
            events.discard(event)
            if not events:
                del self._watchers[h]


def _refusal_handler(kind: str, message: str, reason: str) -> grpc.RpcMethodHandler:
    """A handler of the call's own kind that only refuses; it takes the request
    as raw bytes, so nothing from an unauthenticated peer is parsed."""

    refusal = Refusal(grpc.StatusCode.UNAUTHENTICATED, reason, message)

    async def refuse(request, context):  # noqa: ANN001
        await abort(context, refusal)

    async def refuse_stream(request, context):  # noqa: ANN001
        await abort(context, refusal)
        yield b""  # unreachable: makes this an async generator

    if kind == "unary_stream":
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if kind == "stream_unary":
        return grpc.stream_unary_rpc_method_handler(refuse)
    if kind == "stream_stream":
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


# (task_id, client_id) -> the name the client joined under, None when unknown
OwnerLookup = Callable[[str, str], Awaitable[str | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self, registry: TokenRegistry, exempt: tuple[str, ...] = EXEMPT_PREFIXES, owner: OwnerLookup | None = None
    ) -> None:
        self.registry = registry
        self.exempt = exempt
        self.owner = owner  # bound once the coordinator exists (Hardening.bind)

    async def identity_refusal(self, method: str, request, principal: Principal) -> Refusal | None:  # noqa: ANN001
        """Why ``principal`` may not make this call about this client, or None."""
        if method.endswith("/Join"):
            name = getattr(request, "name", None)
            if isinstance(name, str) and name != principal.name:
                return Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "name-not-token",
                    f"this token joins only under its own name, {principal.name!r}",
                )
            return None
        client_id = getattr(request, "client_id", None)
        if not isinstance(client_id, str) or not client_id:
            return None
        if self.owner is None:
            return Refusal(grpc.StatusCode.UNAVAILABLE, "starting", "the coordinator is starting; try again shortly")
        owner = await self.owner(getattr(request, "task_id", ""), client_id)
        if owner is not None and owner != principal.name:
            return Refusal(grpc.StatusCode.PERMISSION_DENIED, "not-your-client", "this client belongs to another token")
        return None  # an unknown client: the service answers unknown-client

    async def intercept_service(self, continuation, handler_call_details):  # noqa: ANN001
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(self.exempt):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _refusal_handler(
                _kind(handler), "this coordinator requires a client token: authorization: Bearer <token>", "no-token"
            )
        principal = await self.registry.authenticate(token)
        if principal is None:
            return _refusal_handler(_kind(handler), "the client token is unknown or revoked", "bad-token")
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, principal, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, principal, method))
        return handler  # the protocol has no client-streaming calls

    def _unary(self, behavior, principal: Principal, method: str):  # noqa: ANN001, ANN205
        async def call(request, context):  # noqa: ANN001
            current_principal.set(principal)
            refusal = await self.identity_refusal(method, request, principal)
            if refusal is not None:
                await abort(context, refusal)
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result

        return call

    def _stream(self, behavior, principal: Principal, method: str):  # noqa: ANN001, ANN205
        registry = self.registry

        async def call(request, context):  # noqa: ANN001
            current_principal.set(principal)
            refusal = await self.identity_refusal(method, request, principal)
            if refusal is not None:
                await abort(context, refusal)
            events = behavior(request, context)
            if not inspect.isasyncgen(events):  # a handler that writes with context.write
                await events
                return
            revoked = registry.watch(principal.token_hash)
            revoked_wait = asyncio.ensure_future(revoked.wait())
            nxt: asyncio.Future | None = None
            try:
                while True:
                    # Wait for the next event or the revocation, whichever comes first.
                    nxt = asyncio.ensure_future(events.__anext__())
                    await asyncio.wait((nxt, revoked_wait), return_when=asyncio.FIRST_COMPLETED)
                    if not nxt.done():
                        log.info("closing a stream of revoked token %s (%s)", principal.fingerprint, principal.name)
                        await abort(
                            context, Refusal(grpc.StatusCode.UNAUTHENTICATED, "token-revoked", "the client token was revoked")
                        )
                    try:
                        item = nxt.result()
                    except StopAsyncIteration:
                        return
                    nxt = None
                    yield item
            finally:
                # Also reached when the peer cancels: nothing may outlive the call.
                if nxt is not None and not nxt.done():
                    nxt.cancel()
                    await asyncio.gather(nxt, return_exceptions=True)
                revoked_wait.cancel()
                registry.unwatch(principal.token_hash, revoked)
                await events.aclose()

        return call
