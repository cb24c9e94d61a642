"""Container health check: the standard gRPC health service of the local
coordinator, SERVING -> exit 0, anything else -> exit 1.

    python -m seedfed.server.healthcheck [TARGET]

Configured by the same environment as the coordinator, so the image's
HEALTHCHECK needs no arguments:

- target: TARGET, else SEEDFED_HEALTHCHECK_TARGET, else the port of
  SEEDFED_COORDINATOR_LISTEN on 127.0.0.1 (default 50051);
- TLS when SEEDFED_COORDINATOR_TLS_CERT is set: the trusted CA is
  SEEDFED_HEALTHCHECK_TLS_CA, else the certificate file itself (right for a
  self-signed certificate); the name checked is SEEDFED_HEALTHCHECK_SERVER_NAME,
  else the certificate's first DNS name (the check dials 127.0.0.1, which a
  public certificate does not name).

The health service needs no client token.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = 50051
TIMEOUT_S = 3.0


def local_target(listen: str | None) -> str:
    """The address to dial for a coordinator listening on ``listen`` (HOST:PORT)."""
    if not listen:
        return f"127.0.0.1:{DEFAULT_PORT}"
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def first_dns_name(cert_path: str) -> str | None:
    """The first DNS subjectAltName of a PEM certificate, without third-party packages."""
    try:
        decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]  # stdlib, stable since 3.x
    except Exception:
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return value
    return None


def open_channel(target: str, env: Mapping[str, str]) -> grpc.Channel:
    cert = env.get("SEEDFED_COORDINATOR_TLS_CERT")
    if not cert:
        return grpc.insecure_channel(target)
    ca = env.get("SEEDFED_HEALTHCHECK_TLS_CA") or cert
    with open(ca, "rb") as fh:
        credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
    name = env.get("SEEDFED_HEALTHCHECK_SERVER_NAME") or first_dns_name(cert)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(target, credentials, options=options)


def check(target: str, env: Mapping[str, str], service: str = "", timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    try:
        with open_channel(target, env) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        return False, f"{target}: {exc.code().name}: {exc.details()}"
    except OSError as exc:
        return False, f"cannot read a TLS file: {exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    target = argv[0] if argv else env.get("SEEDFED_HEALTHCHECK_TARGET") or local_target(env.get("SEEDFED_COORDINATOR_LISTEN"))
    ok, message = check(target, env, env.get("SEEDFED_HEALTHCHECK_SERVICE", ""))
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
