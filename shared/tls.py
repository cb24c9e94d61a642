"""Transport security: TLS credentials from PEM files, and the rule that
plaintext happens only when asked for by name.

The coordinator serves TLS with ``--tls-cert``/``--tls-key``; a client trusts
the coordinator's CA with ``--tls-ca``. Either side refuses to start with
neither TLS nor an explicit ``--insecure``, so a forgotten flag can never
silently put tokens on the wire in the clear.
"""

from __future__ import annotations

from pathlib import Path

import grpc


class TransportError(ValueError):
    """A TLS/plaintext choice that cannot be used; the message says what to do."""


def _read_pem(path: str | Path, what: str, marker: bytes) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TransportError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if marker not in data:
        raise TransportError(f"{path} does not look like a PEM {what} (no '{marker.decode()}' line)")
    return data


def read_certificate(path: str | Path, what: str = "certificate") -> bytes:
    return _read_pem(path, what, b"-----BEGIN CERTIFICATE-----")


def read_private_key(path: str | Path) -> bytes:
    return _read_pem(path, "private key", b"PRIVATE KEY-----")


def check_server_transport(tls_cert: str | None, tls_key: str | None, insecure: bool) -> None:
    if bool(tls_cert) != bool(tls_key):
        raise TransportError("--tls-cert and --tls-key go together: give both (PEM files), or neither with --insecure")
    if tls_cert and insecure:
        raise TransportError("--insecure contradicts --tls-cert/--tls-key: choose one")
    if not tls_cert and not insecure:
        raise TransportError(
            "refusing to serve without TLS: pass --tls-cert CERT.pem --tls-key KEY.pem, "
            "or --insecure to serve plaintext (only on a trusted network: tokens would travel in the clear)"
        )


def server_credentials(tls_cert: str | Path, tls_key: str | Path) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port``; the certificate file may hold the whole chain."""
    return grpc.ssl_server_credentials([(read_private_key(tls_key), read_certificate(tls_cert))])


def check_client_transport(tls_ca: str | None, insecure: bool) -> None:
    if tls_ca and insecure:
        raise TransportError("--insecure contradicts --tls-ca: choose one")
    if not tls_ca and not insecure:
        raise TransportError(
            "refusing to connect without TLS: pass --tls-ca CA.pem (the CA that signed the coordinator's certificate), "
            "or --insecure for a plaintext coordinator on a trusted network"
        )


def channel_credentials(tls_ca: str | Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=read_certificate(tls_ca, "CA certificate"))


def dial(address: str, *, tls_ca: str | None, insecure: bool, options=()) -> grpc.Channel:  # noqa: ANN001
    """A channel for the operator's tools (``seedfed status``): TLS against
    ``tls_ca``, or plaintext when ``insecure``; neither is refused."""
    check_client_transport(tls_ca, insecure)
    if tls_ca:
        return grpc.secure_channel(address, channel_credentials(tls_ca), options=list(options))
    return grpc.insecure_channel(address, options=list(options))
