"""Prometheus metrics of the coordinator.

Two sources feed one registry: ``PrometheusObserver`` receives the events of
every task's rounds (observer.py is the seam), and ``MetricsInterceptor`` sees
every RPC (bytes in and out, status codes, open streams). Metric names are
listed in docs/security.md's operations section and read back by
``seedfed status --metrics``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from seedfed.server.interception import CallInfo, Interceptor
from seedfed.server.observer import Observer

log = logging.getLogger(__name__)

ROUND_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """Every metric, on its own registry (tests run several coordinators in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds_committed = Counter("seedfed_rounds_committed", "Rounds committed to the ledger.", ["task"], registry=r)
        self.rounds_abandoned = Counter(
            "seedfed_rounds_abandoned", "Round attempts abandoned at their deadline without quorum.", ["task"], registry=r
        )
        self.head_round = Gauge("seedfed_head_round", "The newest committed round.", ["task"], registry=r)
        self.clients_online = Gauge(
            "seedfed_clients_online", "Clients with a live lease or an open Sync stream.", ["task"], registry=r
        )
        self.submissions_accepted = Counter(
            "seedfed_submissions_accepted", "Submissions accepted (idempotent retries not counted).", ["task"], registry=r
        )
        self.submissions_retried = Counter(
            "seedfed_submissions_retried", "Identical resubmissions answered without effect.", ["task"], registry=r
        )
        self.submissions_refused = Counter(
            "seedfed_submissions_refused", "Submissions refused, by reason.", ["task", "reason"], registry=r
        )
        self.round_seconds = Histogram(
            "seedfed_round_seconds", "Round latency: opened to committed.", ["task"], buckets=ROUND_SECONDS_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "seedfed_round_commit_seconds",
            "Time of the commit transaction.",
            ["task"],
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=r,
        )
        self.bytes_received = Counter(
            "seedfed_rpc_received_bytes", "Request payload bytes received, by method.", ["method"], registry=r
        )
        self.bytes_sent = Counter("seedfed_rpc_sent_bytes", "Response payload bytes sent, by method.", ["method"], registry=r)
        self.rpcs = Counter("seedfed_rpcs", "RPCs finished, by method and status code.", ["method", "code"], registry=r)
        self.streams_open = Gauge("seedfed_sync_streams_open", "Server streams (Sync) open now.", registry=r)
        # The start time lets dashboards tell restarts apart.
        Gauge("seedfed_coordinator_start_time_seconds", "Unix time the coordinator started.", registry=r).set(time.time())

    def serve(self, port: int, host: str = "127.0.0.1"):  # noqa: ANN201 - (server, thread)
        """Expose /metrics over HTTP on a background thread."""
        result = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)
        return result


class PrometheusObserver(Observer):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def submission(self, task_id: str, outcome: str) -> None:
        if outcome == "accepted":
            self.m.submissions_accepted.labels(task_id).inc()
        elif outcome == "identical":
            self.m.submissions_retried.labels(task_id).inc()
        else:
            self.m.submissions_refused.labels(task_id, outcome).inc()

    def round_committed(self, task_id: str, round_no: int, seconds_open: float, commit_seconds: float, submissions: int) -> None:
        self.m.rounds_committed.labels(task_id).inc()
        self.m.head_round.labels(task_id).set(round_no)
        self.m.round_seconds.labels(task_id).observe(max(0.0, seconds_open))
        self.m.commit_seconds.labels(task_id).observe(max(0.0, commit_seconds))

    def round_abandoned(self, task_id: str, round_no: int, attempt: int, submissions: int) -> None:
        self.m.rounds_abandoned.labels(task_id).inc()

    def clients_online(self, task_id: str, count: int) -> None:
        self.m.clients_online.labels(task_id).set(count)


def _size(message) -> int:  # noqa: ANN001 - a protobuf message, or raw bytes for refused calls
    if isinstance(message, (bytes, bytearray)):
        return len(message)
    size = getattr(message, "ByteSize", None)
    return size() if size else 0


class MetricsInterceptor(Interceptor):
    """Counts payload bytes and status codes per method. Put it first in the
    interceptor list, so it also sees calls that authentication refuses.
    Methods the server does not serve are not counted: their names come from
    the peer and would let it mint label values."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def received(self, call: CallInfo, request: Any) -> None:  # noqa: ANN401
        self.m.bytes_received.labels(call.method).inc(_size(request))
        if call.streaming:
            self.m.streams_open.inc()

    def sent(self, call: CallInfo, message: Any) -> None:  # noqa: ANN401
        self.m.bytes_sent.labels(call.method).inc(_size(message))

    def finished(self, call: CallInfo, code: str) -> None:
        if call.streaming:
            self.m.streams_open.dec()
        self.m.rpcs.labels(call.method, code).inc()


# -- reading the metrics back (``seedfed status --metrics URL``)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (cumulative (le, count) pairs)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for le, count in buckets:
        if count >= target:
            return le
    return buckets[-1][0]


def summarize(text: str) -> dict[str, object]:
    """The figures an operator looks at first, from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, object] = {
        "rounds_committed": 0.0,
        "rounds_abandoned": 0.0,
        "clients_online": 0.0,
        "submissions_accepted": 0.0,
        "submissions_refused": {},
        "bytes_received": 0.0,
        "bytes_sent": 0.0,
        "streams_open": 0.0,
    }
    buckets: list[tuple[float, float]] = []
    latency_sum = latency_count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, value = s.name, s.value
            if name == "seedfed_rounds_committed_total":
                out["rounds_committed"] += value
            elif name == "seedfed_rounds_abandoned_total":
                out["rounds_abandoned"] += value
            elif name == "seedfed_clients_online":
                out["clients_online"] += value
            elif name == "seedfed_submissions_accepted_total":
                out["submissions_accepted"] += value
            elif name == "seedfed_submissions_refused_total":
                refused = out["submissions_refused"]
                refused[s.labels["reason"]] = refused.get(s.labels["reason"], 0.0) + value
            elif name == "seedfed_rpc_received_bytes_total":
                out["bytes_received"] += value
            elif name == "seedfed_rpc_sent_bytes_total":
                out["bytes_sent"] += value
            elif name == "seedfed_sync_streams_open":
                out["streams_open"] += value
            elif name == "seedfed_round_seconds_bucket":
                le = float(s.labels["le"])
                for i, (b, c) in enumerate(buckets):  # several tasks: add up per bound
                    if b == le:
                        buckets[i] = (b, c + value)
                        break
                else:
                    buckets.append((le, value))
            elif name == "seedfed_round_seconds_sum":
                latency_sum += value
            elif name == "seedfed_round_seconds_count":
                latency_count += value
    buckets.sort()
    out["round_seconds_mean"] = latency_sum / latency_count if latency_count else None
    out["round_seconds_p50"] = _quantile(buckets, 0.5)
    out["round_seconds_p99"] = _quantile(buckets, 0.99)
    return out


def fetch_summary(url: str, timeout: float = 5.0) -> dict[str, object]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
        return summarize(response.read().decode())


def summary_rows(s: dict[str, object]) -> list[tuple[str, str]]:
    """The summary as (label, value) lines for a table."""

    def secs(v: object) -> str:
        return "-" if v is None else f"{v:.3g} s"

    refused = s["submissions_refused"]
    refused_text = ", ".join(f"{k} {int(v)}" for k, v in sorted(refused.items())) if refused else "none"
    return [
        ("rounds committed", f"{int(s['rounds_committed'])} ({int(s['rounds_abandoned'])} attempts abandoned)"),
        ("clients online (metrics)", str(int(s["clients_online"]))),
        ("submissions accepted", str(int(s["submissions_accepted"]))),
        ("submissions refused", refused_text),
        ("bytes in / out", f"{int(s['bytes_received']):,} / {int(s['bytes_sent']):,}"),
        (
            "round latency",
            f"mean {secs(s['round_seconds_mean'])}, p50 <= {secs(s['round_seconds_p50'])}, p99 <= {secs(s['round_seconds_p99'])}",
        ),
        ("sync streams open", str(int(s["streams_open"]))),
    ]
