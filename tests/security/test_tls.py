"""TLS on loopback with certificates made in the test, and the rule that
plaintext needs an explicit --insecure."""

from __future__ import annotations

import grpc
import pytest
from helpers import run
from sec_helpers import aio_channel, hardened, make_spec, stub

from seedfed.server.tokens import open_token_store
from seedfed.shared.tls import TransportError, check_client_transport, check_server_transport
from seedfed.v1 import coordinator_pb2 as pb


def test_tls_round_trip_and_refusals(db_url, certs) -> None:  # noqa: ANN001
    token = open_token_store(db_url).create("tls-device")

    async def main() -> None:
        async with hardened(db_url, [make_spec()], certs=certs) as live:
            async with aio_channel(live.port, token=token, ca=certs.ca, host="localhost") as ch:
                assert (await stub(ch).Status(pb.StatusRequest(task_id="sec"), timeout=5)).task_id == "sec"
            async with aio_channel(live.port, token=token, ca=certs.ca, host="127.0.0.1") as ch:  # the IP SAN
                assert (await stub(ch).Status(pb.StatusRequest(task_id="sec"), timeout=5)).task_id == "sec"
            for kwargs in ({"ca": certs.other_ca, "host": "localhost"}, {}):  # an untrusted CA; plaintext against TLS
                async with aio_channel(live.port, token=token, **kwargs) as ch:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub(ch).Status(pb.StatusRequest(task_id="sec"), timeout=3)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    run(main())


def test_plaintext_client_cannot_reach_a_tls_server_and_vice_versa(db_url, certs) -> None:  # noqa: ANN001
    async def main() -> None:
        async with hardened(db_url, [make_spec()], auth=False) as live:  # plaintext server
            async with aio_channel(live.port, ca=certs.ca, host="localhost") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub(ch).Status(pb.StatusRequest(task_id="sec"), timeout=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    run(main())


@pytest.mark.parametrize(
    ("cert", "key", "insecure", "message"),
    [
        (None, None, False, "refusing to serve without TLS"),
        ("c.pem", None, False, "go together"),
        (None, "k.pem", True, "go together"),
        ("c.pem", "k.pem", True, "choose one"),
    ],
)
def test_server_transport_choice(cert, key, insecure, message) -> None:  # noqa: ANN001
    with pytest.raises(TransportError, match=message):
        check_server_transport(cert, key, insecure)


def test_server_transport_accepts_explicit_choices() -> None:
    check_server_transport("c.pem", "k.pem", False)
    check_server_transport(None, None, True)


def test_client_transport_choice() -> None:
    with pytest.raises(TransportError, match="refusing to connect without TLS"):
        check_client_transport(None, False)
    with pytest.raises(TransportError, match="choose one"):
        check_client_transport("ca.pem", True)
    check_client_transport("ca.pem", False)
    check_client_transport(None, True)


def test_unreadable_or_wrong_pem_files_are_named(tmp_path, certs) -> None:  # noqa: ANN001
    from seedfed.shared.tls import server_credentials

    with pytest.raises(TransportError, match="cannot read"):
        server_credentials(tmp_path / "missing.pem", certs.key)
    with pytest.raises(TransportError, match="does not look like a PEM private key"):
        server_credentials(certs.cert, certs.cert)
