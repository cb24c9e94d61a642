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
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from seedfed.server import errors
from seedfed.server.errors import Refusal
from seedfed.server.interception import CallInfo, Interceptor
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


# (task_id, client_id) -> the name the client joined under, None when unknown
OwnerLookup = Callable[[str, str], Awaitable[str | None]]


@dataclass
class _Call:
    method: str
    principal: Principal
    revoked: asyncio.Event | None = field(default=None)


class AuthInterceptor(Interceptor):
    def __init__(
        self, registry: TokenRegistry, exempt: tuple[str, ...] = EXEMPT_PREFIXES, owner: OwnerLookup | None = None
    ) -> None:
        self.registry = registry
        self.exempt = exempt
        self.owner = owner  # bound once the coordinator exists (Hardening.bind)

    def covers(self, method: str) -> bool:
        return not method.startswith(self.exempt)

    async def open(self, call: CallInfo) -> _Call:
        token = bearer_token(call.metadata)
        if token is None:
            raise Refusal(errors.NO_TOKEN, "this coordinator requires a client token: authorization: Bearer <token>")
        principal = await self.registry.authenticate(token)
        if principal is None:
            raise Refusal(errors.BAD_TOKEN, "the client token is unknown or revoked")
        return _Call(call.method, principal)

    async def admit(self, call: _Call, request: Any, context: grpc.aio.ServicerContext) -> None:  # noqa: ANN401
        """Refuses when the caller may not make this call about this client."""
        principal = call.principal
        if call.method.endswith("/Join"):
            name = getattr(request, "name", None)
            if isinstance(name, str) and name != principal.name:
                raise Refusal(errors.NAME_NOT_TOKEN, f"this token joins only under its own name, {principal.name!r}")
            return
        client_id = getattr(request, "client_id", None)
        if not isinstance(client_id, str) or not client_id:
            return
        if self.owner is None:
            raise Refusal(errors.STARTING, "the coordinator is starting; try again shortly")
        owner = await self.owner(getattr(request, "task_id", ""), client_id)
        if owner is not None and owner != principal.name:
            raise Refusal(errors.NOT_YOUR_CLIENT, "this client belongs to another token")
        # an unknown client: the service answers unknown-client

    def until(self, call: _Call) -> Awaitable[Refusal]:
        """An open stream ends when its token is revoked."""
        call.revoked = self.registry.watch(call.principal.token_hash)

        async def revoked() -> Refusal:
            await call.revoked.wait()
            log.info("closing a stream of revoked token %s (%s)", call.principal.fingerprint, call.principal.name)
            return Refusal(errors.TOKEN_REVOKED, "the client token was revoked")

        return revoked()

    def finished(self, call: _Call, code: str) -> None:
        if call.revoked is not None:
            self.registry.unwatch(call.principal.token_hash, call.revoked)
