"""Prometheus metrics of a live coordinator, and JSON log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request

import grpc
import pytest
from loadclient import ScriptedClient
from sec_helpers import aio_channel, hardened, make_spec, stub

from seedfed.server.metrics import summarize
from seedfed.server.tokens import open_token_store
from seedfed.shared.logs import configure_logging
from seedfed.v1 import coordinator_pb2 as pb


def test_metrics_after_a_short_run(db_url) -> None:  # noqa: ANN001
    store = open_token_store(db_url)
    tokens = [store.create(f"m{i}") for i in range(2)]  # a token per device
    spec = make_spec(min_clients=2, max_rounds=3)

    async def main() -> str:
        async with hardened(db_url, [spec]) as live:
            server, _ = live.hardening.metrics.serve(0)
            port = server.server_port
            try:
                async with (
                    aio_channel(live.port, token=tokens[0]) as c0,
                    aio_channel(live.port, token=tokens[1]) as c1,
                    aio_channel(live.port) as anon,
                ):
                    clients = [ScriptedClient(stub(ch), spec.task_id, f"m{i}", spec.base_digest) for i, ch in enumerate((c0, c1))]
                    await asyncio.gather(*(c.run(3) for c in clients))
                    # A late submission (round 1 is committed) and an unauthenticated call.
                    with pytest.raises(grpc.aio.AioRpcError):
                        await clients[0].submit(1, 0, b"\x01" * spec.local_steps)
                    with pytest.raises(grpc.aio.AioRpcError):
                        await stub(anon).Status(pb.StatusRequest(task_id=spec.task_id), timeout=5)
                return await asyncio.to_thread(
                    lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                )
            finally:
                server.shutdown()
                server.server_close()

    text = asyncio.run(asyncio.wait_for(main(), 60))
    m = summarize(text)
    assert m["rounds_committed"] == 3
    assert m["submissions_accepted"] == 6
    assert m["submissions_refused"] == {"late": 1}
    assert m["bytes_received"] > 0 and m["bytes_sent"] > m["bytes_received"]
    assert m["round_seconds_p99"] is not None and m["round_seconds_mean"] > 0
    assert 'seedfed_round_seconds_count{task="sec"} 3.0' in text
    assert 'seedfed_rpcs_total{code="UNAUTHENTICATED",method="/seedfed.v1.Coordinator/Status"} 1.0' in text
    assert 'seedfed_rpcs_total{code="OK",method="/seedfed.v1.Coordinator/Join"} 2.0' in text
    assert "seedfed_clients_online" in text


def test_json_logs() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        logging.getLogger("seedfed.test").warning("round %d committed", 7, extra={"task": "sec"})
    finally:
        configure_logging("warning", "text")
    line = json.loads(out.getvalue().strip())
    assert line["message"] == "round 7 committed" and line["level"] == "warning" and line["task"] == "sec"
    assert line["logger"] == "seedfed.test" and line["time"].endswith("Z")


def test_an_identical_retry_counts_as_a_retry(db_url) -> None:  # noqa: ANN001
    from prometheus_client import generate_latest
    from sec_helpers import BASE_DIGEST

    spec = make_spec(min_clients=2)  # b never submits: round 1 stays open for a's retry

    async def main() -> str:
        async with hardened(db_url, [spec], auth=False) as live:
            async with aio_channel(live.port) as ch:
                s = stub(ch)
                a, _ = [
                    (await s.Join(pb.JoinRequest(task_id="sec", name=n, base_digest=BASE_DIGEST), timeout=5)).client_id
                    for n in ("a", "b")
                ]
                while (await s.Status(pb.StatusRequest(task_id="sec"), timeout=5)).open_round != 1:
                    await asyncio.sleep(0.02)
                submit = pb.SubmitRequest(task_id="sec", client_id=a, round=1, slot=0, scalars=b"\x01" * spec.local_steps)
                first, again = await s.Submit(submit, timeout=5), await s.Submit(submit, timeout=5)
                assert (first.received, again.received) == (1, 1)
            return generate_latest(live.hardening.metrics.registry).decode()

    text = asyncio.run(asyncio.wait_for(main(), 60))
    assert 'seedfed_submissions_accepted_total{task="sec"} 1.0' in text
    assert 'seedfed_submissions_retried_total{task="sec"} 1.0' in text
