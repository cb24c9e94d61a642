"""The commands as an operator runs them: a coordinator process with TLS,
tokens, metrics and JSON logs; `seedfed token`; `seedfed status`; the refusal
to start without a transport choice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port
from sec_helpers import make_spec

SEEDFED = [str(Path(sys.executable).parent / "seedfed")]  # the console script of this environment
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _seedfed(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SEEDFED, *args], capture_output=True, text=True, timeout=timeout, env=env or ENV)


@pytest.fixture
def task_file(tmp_path) -> Path:  # noqa: ANN001
    path = tmp_path / "task.toml"
    path.write_text(make_spec(task_id="cli", min_clients=1).to_toml())
    return path


def test_refuses_to_start_without_a_transport_choice(tmp_path, task_file) -> None:  # noqa: ANN001
    result = _seedfed(
        "coordinator", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--task", str(task_file), "--listen", "127.0.0.1:0"
    )
    assert result.returncode != 0
    assert "refusing to serve without TLS" in result.stderr and "--insecure" in result.stderr


def test_tls_tokens_metrics_logs_and_status(tmp_path, task_file, certs) -> None:  # noqa: ANN001
    db = f"sqlite:///{tmp_path / 'c.db'}"
    created = _seedfed("token", "create", "--name", "operator", "--db", db)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    metrics_port = free_port()
    proc = subprocess.Popen(
        [
            *SEEDFED,
            "coordinator",
            "--db",
            db,
            "--task",
            str(task_file),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--metrics-port",
            str(metrics_port),
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"listening on [^:]+:(\d+)", line)
        assert match, line + proc.stderr.read() if proc.poll() is not None else line
        port = match.group(1)

        status = _seedfed(
            "status",
            "--coordinator",
            f"localhost:{port}",
            "--tls-ca",
            str(certs.ca),
            "--token",
            token,
            "--metrics",
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        assert status.returncode == 0, status.stderr
        for words in ("head round", "clients online", "rounds committed", "submissions refused", "bytes in", "round latency"):
            assert words in status.stdout, status.stdout

        denied = _seedfed("status", "--coordinator", f"localhost:{port}", "--tls-ca", str(certs.ca))
        assert denied.returncode != 0 and "UNAUTHENTICATED" in denied.stderr
        plain = _seedfed("status", "--coordinator", f"localhost:{port}", "--token", token)
        assert plain.returncode != 0 and "--tls-ca" in plain.stderr  # no transport choice: refused before dialling

        health_env = {
            **ENV,
            "SEEDFED_COORDINATOR_LISTEN": f"0.0.0.0:{port}",
            "SEEDFED_COORDINATOR_TLS_CERT": str(certs.cert),
            "SEEDFED_HEALTHCHECK_TLS_CA": str(certs.ca),
        }
        health = subprocess.run(
            [sys.executable, "-m", "seedfed.server.healthcheck"], env=health_env, capture_output=True, text=True, timeout=30
        )
        assert health.returncode == 0, health.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("metrics on" in r["message"] for r in records)


def _tiny_task(root: Path) -> tuple[Path, Path, str]:
    """A tiny BERT, a data file and a task file (task id 'tok')."""
    from seedfed.client.genesis import genesis_for_model
    from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples, write_tsv
    from seedfed.client.simulate.tinymodel import build_tiny_encoder
    from seedfed.shared.taskspec import Objective

    rows = make_examples(60, seed=3)
    write_tsv(root / "train.tsv", rows)
    build_tiny_encoder(root / "model", [t for t, _ in rows] + [f"a {lab} review" for lab in LABEL_NAMES], hidden=32)
    objective = Objective(kind="classification", labels=LABEL_NAMES, template="a {label} review", max_length=32)
    spec = genesis_for_model(
        str(root / "model"),
        "tok",
        objective,
        task_seed=9,
        min_clients=1,
        local_steps=2,
        batch_size=4,
        pool_size=64,
        lr=1e-3,
        round_deadline_s=5.0,
    )
    (root / "task.toml").write_text(spec.to_toml())
    return root / "model", root / "train.tsv", "tok"


def test_a_client_process_with_a_token_over_tls_until_revoked(tmp_path, certs) -> None:  # noqa: ANN001
    model, data, task_id = _tiny_task(tmp_path)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    token = _seedfed("token", "create", "--name", "laptop-1", "--db", db).stdout.strip()
    operator = _seedfed("token", "create", "--name", "operator", "--db", db).stdout.strip()
    client_args = [
        "client",
        "--coordinator",
        "",
        "--task",
        task_id,
        "--data",
        str(data),
        "--cache",
        str(tmp_path / "cache"),
        "--model",
        str(model),
        "--name",
        "laptop-1",
        "--quiet",
    ]

    no_transport = _seedfed(*client_args[:2], "127.0.0.1:1", *client_args[3:])
    assert no_transport.returncode != 0 and "refusing to connect without TLS" in no_transport.stderr

    coord = subprocess.Popen(
        [
            *SEEDFED,
            "coordinator",
            "--db",
            db,
            "--task",
            str(tmp_path / "task.toml"),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(certs.cert),
            "--tls-key",
            str(certs.key),
            "--auth-refresh",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    client = None
    try:
        port = re.search(r"listening on [^:]+:(\d+)", coord.stdout.readline()).group(1)
        args = [*client_args[:2], f"localhost:{port}", *client_args[3:], "--tls-ca", str(certs.ca)]
        client = subprocess.Popen(
            [*SEEDFED, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**ENV, "SEEDFED_CLIENT_TOKEN": token},
        )
        from seedfed.shared.tls import dial
        from seedfed.v1 import coordinator_pb2 as pb
        from seedfed.v1 import coordinator_pb2_grpc as pb_grpc

        with dial(f"localhost:{port}", tls_ca=str(certs.ca), insecure=False) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            deadline = time.monotonic() + 120
            while (
                stub.Status(
                    pb.StatusRequest(task_id=task_id), metadata=(("authorization", f"Bearer {operator}"),), timeout=5
                ).head_round
                < 2
            ):
                assert client.poll() is None, client.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the client did not complete two rounds"
                time.sleep(0.2)
        assert _seedfed("token", "revoke", "laptop-1", "--db", db).returncode == 0
        t0 = time.monotonic()
        _, err = client.communicate(timeout=30)
        assert client.returncode != 0 and "revoked" in err, err[-2000:]
        assert time.monotonic() - t0 < 15
    finally:
        for proc in (client, coord):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
