"""Builders for the security tests: certificates made on the spot, a hardened
coordinator on loopback (TLS, tokens, limits, metrics: the same pieces the
CLI wires), and channels that carry a token."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import loadclient
from loadclient import BASE_DIGEST  # noqa: F401 - re-exported to the security tests

from seedfed.server.app import start_coordinator
from seedfed.server.hardening import Hardening
from seedfed.server.rounds import RoundsConfig
from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

# -- certificates --------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server certificate


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for localhost and 127.0.0.1 signed by it, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = _ca("seedfed test CA")
    _, other_cert = _ca("some other CA")
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "other-ca.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.other_ca.write_bytes(other_cert.public_bytes(pem))
    paths.cert.write_bytes(cert.public_bytes(pem))
    paths.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# -- channels ----------------------------------------------------------------------------


# grpc.aio files an interceptor under one kind only, so one class per kind.
class _UnaryMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs

    def _details(self, d):  # noqa: ANN001, ANN202
        return d._replace(metadata=grpc.aio.Metadata(*(tuple(d.metadata or ()) + self.pairs)))

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # noqa: ANN001
        return await continuation(self._details(client_call_details), request)


class _StreamMetadata(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs

    _details = _UnaryMetadata._details

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # noqa: ANN001
        return await continuation(self._details(client_call_details), request)


def aio_channel(
    port: int, token: str | None = None, ca: Path | None = None, host: str = "127.0.0.1", options=()
) -> grpc.aio.Channel:  # noqa: ANN001
    pairs = (("authorization", f"Bearer {token}"),)
    interceptors = [_UnaryMetadata(pairs), _StreamMetadata(pairs)] if token else None
    target = f"{host}:{port}"
    if ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return grpc.aio.secure_channel(target, creds, options=list(options), interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)


def stub(channel: grpc.aio.Channel) -> pb_grpc.CoordinatorStub:
    return pb_grpc.CoordinatorStub(channel)


# -- a hardened coordinator --------------------------------------------------------------


@dataclass
class Live:
    port: int
    hardening: Hardening
    running: object  # app.RunningCoordinator

    @property
    def rounds(self):  # noqa: ANN201 - the rounds of the only task
        return next(iter(self.running.coordinator.rounds.values()))


@asynccontextmanager
async def hardened(
    db_url: str,
    specs,
    *,
    certs: Certs | None = None,
    auth: bool = True,
    lease_seconds: float = 5.0,  # noqa: ANN001
    tick: float = 0.05,
    auth_refresh: float = 0.2,
    join_rate: float = 50.0,
    join_burst: float = 50.0,
):
    h = Hardening.from_options(
        db_url,
        tls_cert=str(certs.cert) if certs else None,
        tls_key=str(certs.key) if certs else None,
        insecure=certs is None,
        no_auth=not auth,
        auth_refresh=auth_refresh,
        join_rate=join_rate,
        join_burst=join_burst,
    )
    await h.start()
    running = await start_coordinator(
        db_url,
        "127.0.0.1:0",
        tasks=specs,
        config=RoundsConfig(lease_seconds=lease_seconds, tick_seconds=tick),
        observer=h.observer,
        interceptors=h.interceptors,
        credentials=h.credentials,
    )
    h.bind(running.coordinator)
    try:
        yield Live(running.port, h, running)
    finally:
        await running.stop(grace=0.5)
        await h.stop()


# -- tasks --------------------------------------------------------------------------------


def make_spec(**overrides):  # noqa: ANN001, ANN201
    return loadclient.make_spec(**{"task_id": "sec", "task_seed": 4242, **overrides})


# -- a hardened coordinator on a thread of its own (for synchronous test code, e.g. hypothesis)


class ThreadedCoordinator:
    """``with ThreadedCoordinator(url, specs) as live:`` serves on its own event
    loop thread; ``live.port``, ``live.call(coro_fn)`` runs a coroutine there."""

    def __init__(self, db_url: str, specs, **kwargs) -> None:  # noqa: ANN001
        self.db_url, self.specs, self.kwargs = db_url, specs, kwargs
        self.live: Live | None = None

    def __enter__(self) -> ThreadedCoordinator:
        import threading

        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._error: BaseException | None = None

        async def serve() -> None:
            self._stop = asyncio.Event()
            try:
                async with hardened(self.db_url, self.specs, **self.kwargs) as live:
                    self.live = live
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                self._error = exc
                ready.set()
                raise

        def thread_main() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except BaseException:  # noqa: BLE001
                pass

        self._thread = threading.Thread(target=thread_main, name="coordinator-under-test", daemon=True)
        self._thread.start()
        ready.wait(60)
        if self._error is not None or self.live is None:
            raise RuntimeError(f"the coordinator did not start: {self._error!r}")
        return self

    @property
    def port(self) -> int:
        return self.live.port

    def call(self, fn, timeout: float = 30.0):  # noqa: ANN001, ANN201
        """Run ``fn()`` (a coroutine function) on the coordinator's loop."""
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
