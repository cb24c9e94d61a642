"""The container health check: plaintext, TLS, and a coordinator that is not there."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "security"))

from helpers import free_port, run  # noqa: E402
from sec_helpers import hardened, make_certs, make_spec  # noqa: E402

from seedfed.server import healthcheck  # noqa: E402


def test_local_target() -> None:
    assert healthcheck.local_target(None) == "127.0.0.1:50051"
    assert healthcheck.local_target("0.0.0.0:7000") == "127.0.0.1:7000"
    assert healthcheck.local_target("[::]:7000") == "127.0.0.1:7000"
    assert healthcheck.local_target("10.1.2.3:7000") == "10.1.2.3:7000"


def test_plaintext_and_tls(tmp_path) -> None:  # noqa: ANN001
    certs = make_certs(tmp_path)
    url = f"sqlite:///{tmp_path / 'c.db'}"

    async def main() -> None:
        async with hardened(url, [make_spec()], auth=True) as live:  # health needs no token
            env = {"SEEDFED_COORDINATOR_LISTEN": f"0.0.0.0:{live.port}"}
            assert await asyncio.to_thread(healthcheck.main, [], env) == 0
        async with hardened(url, [make_spec()], certs=certs) as live:
            env = {
                "SEEDFED_COORDINATOR_LISTEN": f"0.0.0.0:{live.port}",
                "SEEDFED_COORDINATOR_TLS_CERT": str(certs.cert),
                "SEEDFED_HEALTHCHECK_TLS_CA": str(certs.ca),
            }
            assert await asyncio.to_thread(healthcheck.main, [], env) == 0
            assert healthcheck.first_dns_name(str(certs.cert)) == "localhost"
            env_plain = {"SEEDFED_COORDINATOR_LISTEN": f"0.0.0.0:{live.port}"}
            assert await asyncio.to_thread(healthcheck.main, [], env_plain) == 1

    run(main())


def test_nothing_listening_is_unhealthy() -> None:
    assert healthcheck.main([f"127.0.0.1:{free_port()}"], {}) == 1
