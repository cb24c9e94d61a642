"""Building and running the gRPC server.

Every server checks requests (limits.RequestLimits) and answers storage
failures with a reason (servicer.StorageRefusals). Seams for deployment
hardening: ``build_server(interceptors=...)`` takes more interceptors,
outside those two (tokens from the ``authorization`` metadata, Join rate,
metrics of bytes per RPC); ``add_listener(credentials=...)`` takes
grpc.ServerCredentials for TLS; ``Coordinator(observer=...)`` takes the
metrics observer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from seedfed.server.coordinator import Coordinator
from seedfed.server.db import CoordinatorLock, open_store
from seedfed.server.limits import TRANSPORT_OPTIONS, RequestLimits
from seedfed.server.observer import NULL_OBSERVER, Observer
from seedfed.server.rounds import RoundsConfig
from seedfed.server.servicer import CoordinatorServicer, StorageRefusals
from seedfed.shared.taskspec import TaskSpec
from seedfed.shared.wire import MAX_RESPONSE_BYTES
from seedfed.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name

SERVER_OPTIONS: list[tuple[str, int]] = [
    *TRANSPORT_OPTIONS,
    ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
    # Find dead peers of idle Sync streams; allow clients' keepalive pings.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def build_server(
    coordinator: Coordinator,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    options: Sequence[tuple[str, int]] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    server = grpc.aio.server(
        interceptors=[*interceptors, RequestLimits(), StorageRefusals()], options=[*SERVER_OPTIONS, *options]
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(coordinator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def add_listener(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Bind ``address``; returns the port (useful with port 0)."""
    port = server.add_secure_port(address, credentials) if credentials is not None else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


@dataclass
class RunningCoordinator:
    coordinator: Coordinator
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    lock: CoordinatorLock | None = None
    _stopped: bool = field(default=False)

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.coordinator.stop()  # ends every Sync stream with UNAVAILABLE
        await self.server.stop(grace)
        await self.coordinator.close()
        if self.lock is not None:
            self.lock.release()


async def start_coordinator(
    store_url: str,
    listen: str,
    *,
    tasks: Sequence[TaskSpec] = (),
    config: RoundsConfig = RoundsConfig(),
    observer: Observer = NULL_OBSERVER,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, int]] = (),
    store=None,  # noqa: ANN001 - a LedgerStore given directly (tests, the CLI) instead of store_url
    lock: CoordinatorLock | None = None,
) -> RunningCoordinator:
    """Open (and migrate) the database unless a store is given, start the
    rounds of every task, register ``tasks``, bind ``listen`` and serve."""
    if store is None:
        store, lock = open_store(store_url, lock=True)
    try:
        coordinator = Coordinator(store, config, observer)
        await coordinator.start()
        for spec in tasks:
            await coordinator.register_task(spec)
        server, health_servicer = build_server(coordinator, interceptors=interceptors, options=options)
        port = add_listener(server, listen, credentials)
    except BaseException:
        store.close()
        if lock is not None:
            lock.release()
        raise
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return RunningCoordinator(coordinator, server, health_servicer, port, lock)


async def run_until_signal(running: RunningCoordinator, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(running.port)
    await stop.wait()
    log.info("shutting down")
    await running.stop()
