"""What a public coordinator adds around the service: transport security,
client tokens, request limits, metrics and structured logs.

``hardening_options`` puts the flags on ``seedfed coordinator``;
``Hardening.from_options`` turns them into what ``start_coordinator`` takes
(interceptors, server credentials, an observer). Request limits and their
transport options are on every server (app.build_server), hardened or not. Every flag is also an
environment variable, SEEDFED_COORDINATOR_<FLAG> (the container's way).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import click
import grpc

from seedfed.server.auth import DEFAULT_REFRESH_S, AuthInterceptor, TokenRegistry
from seedfed.server.db import DatabaseError, is_memory
from seedfed.server.limits import JoinRateLimit, PeerLimiter
from seedfed.server.metrics import Metrics, MetricsInterceptor, PrometheusObserver
from seedfed.shared.logs import LOG_FORMATS
from seedfed.shared.tls import TransportError, check_server_transport, server_credentials

log = logging.getLogger(__name__)

OPTION_NAMES = (
    "tls_cert",
    "tls_key",
    "insecure",
    "no_auth",
    "auth_refresh",
    "metrics_port",
    "metrics_host",
    "join_rate",
    "join_burst",
)


def hardening_options(f):  # noqa: ANN001, ANN201
    """The deployment flags of ``seedfed coordinator`` (applied bottom-up, so listed in reverse)."""
    options = [
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (chain) to serve TLS with"),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert"),
        click.option("--insecure", is_flag=True, help="serve plaintext without TLS (only on a trusted network)"),
        click.option("--no-auth", is_flag=True, help="accept RPCs without a client token (tests, trusted networks)"),
        click.option(
            "--auth-refresh",
            default=DEFAULT_REFRESH_S,
            show_default=True,
            type=click.FloatRange(min=0.05),
            help="seconds between reloads of the token table: the delay until a revocation bites",
        ),
        click.option(
            "--metrics-port", type=click.IntRange(0, 65535), default=None, help="serve Prometheus metrics on this port (/metrics)"
        ),
        click.option("--metrics-host", default="127.0.0.1", show_default=True, help="address the metrics endpoint binds to"),
        click.option(
            "--join-rate",
            default=10.0,
            show_default=True,
            type=click.FloatRange(min=0.001),
            help="Join calls per second allowed per peer address",
        ),
        click.option(
            "--join-burst",
            default=50.0,
            show_default=True,
            type=click.FloatRange(min=1),
            help="Join calls a peer may make at once",
        ),
        click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            default="text",
            show_default=True,
            help="text for people, json for log collectors (one object per line)",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@dataclass
class Hardening:
    interceptors: list[grpc.aio.ServerInterceptor]
    credentials: grpc.ServerCredentials | None
    metrics: Metrics
    observer: PrometheusObserver
    registry: TokenRegistry | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    token_store: Any = None
    _http: Any = field(default=None, repr=False)

    @classmethod
    def from_options(
        cls,
        db_url: str,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        insecure: bool = False,
        no_auth: bool = False,
        auth_refresh: float = DEFAULT_REFRESH_S,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        join_rate: float = 10.0,
        join_burst: float = 50.0,
    ) -> Hardening:
        """Raises TransportError for an unusable TLS/plaintext choice, DatabaseError
        when the token table cannot be read."""
        check_server_transport(tls_cert, tls_key, insecure)
        credentials = server_credentials(tls_cert, tls_key) if tls_cert and tls_key else None
        metrics = Metrics()
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)]  # first: it also counts refusals
        registry, token_store = None, None
        if not no_auth:
            from seedfed.server.tokens import open_token_store

            if is_memory(db_url):
                raise DatabaseError("client tokens live in a database: a memory:// coordinator runs only with --no-auth")

            token_store = open_token_store(db_url)
            registry = TokenRegistry.for_store(token_store, auth_refresh)
            interceptors.append(AuthInterceptor(registry))
        interceptors.append(JoinRateLimit(PeerLimiter(rate=join_rate, burst=join_burst)))
        return cls(
            interceptors,
            credentials,
            metrics,
            PrometheusObserver(metrics),
            registry=registry,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            token_store=token_store,
        )

    def bind(self, coordinator) -> None:  # noqa: ANN001 - a seedfed.server.coordinator.Coordinator
        """Let authentication see which name each client joined under."""

        async def owner(task_id: str, client_id: str) -> str | None:
            rounds = coordinator.rounds.get(task_id)
            client = rounds.clients.get(client_id) if rounds is not None else None
            return None if client is None else client.name

        for interceptor in self.interceptors:
            if isinstance(interceptor, AuthInterceptor):
                interceptor.owner = owner

    async def start(self) -> None:
        if self.registry is not None:
            await self.registry.start()
            if not self.registry.active_count():
                log.warning("client tokens are required but none is active: create one with `seedfed token create --name NAME`")
        else:
            log.warning("client authentication is off (--no-auth): anyone who reaches this port can join and submit")
        if self.credentials is None:
            log.warning("serving plaintext (--insecure): use --tls-cert/--tls-key on an untrusted network")
        if self.metrics_port is not None:
            self._http = self.metrics.serve(self.metrics_port, self.metrics_host)

    async def stop(self) -> None:
        if self.registry is not None:
            await self.registry.stop()
        if self.token_store is not None:
            self.token_store.engine.dispose()
        if self._http is not None and isinstance(self._http, tuple):
            server = self._http[0]
            server.shutdown()
            server.server_close()


def options_from_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the hardening flags out of a click command's keyword arguments."""
    return {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}


__all__ = ["Hardening", "TransportError", "hardening_options", "options_from_kwargs"]
