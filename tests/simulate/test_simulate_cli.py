"""`seedfed simulate` as a user runs it: real coordinator and client processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from seedfed.client.simulate.processes import seedfed_command
from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples
from seedfed.client.simulate.tinymodel import build_tiny_encoder
from seedfed.shared.ledger import read_ledger_file
from seedfed.shared.taskspec import TaskSpec


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = [t for t, _ in make_examples(400, seed=1)] + [f"a {lab} review" for lab in LABEL_NAMES]
    return build_tiny_encoder(tmp_path_factory.mktemp("model") / "tiny", texts, hidden=32)


def seedfed(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*seedfed_command(), *args], capture_output=True, text=True, timeout=timeout)


def test_prepare_only_writes_what_the_compose_file_expects(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "demo"
    r = seedfed("simulate", "--prepare-only", "--clients", "2", "--model", str(tiny_model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    spec = TaskSpec.load_toml(out / "task.toml")
    assert spec.task_id == "demo" and spec.min_clients == 2
    assert (out / "model" / "config.json").is_file()
    shares = [(out / "data" / f"client-{i}.tsv").read_text().splitlines() for i in range(2)]
    assert all(len(s) > 100 and s[0] == "sentence\tlabel" for s in shares)
    held_out = (out / "data" / "eval.tsv").read_text().splitlines()
    assert len(shares[0]) + len(shares[1]) + len(held_out) - 3 == 1200  # a partition of the generated rows
    assert not (out / "coordinator.db").exists()


def test_simulate_runs_a_federation_and_every_client_holds_the_export(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "sim"
    r = seedfed(
        "simulate",
        "--clients",
        "2",
        "--rounds",
        "4",
        "--split",
        "dirichlet",
        "--alpha",
        "0.5",
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--timeout",
        "500",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "every client holds the exported model's digest" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 4
    assert {c["digest"] for c in summary["clients"]} == {summary["digest"]}
    assert all(c["bytes_sent"] > 0 and c["bytes_received"] > 0 for c in summary["clients"])
    meta = json.loads((out / "export" / "seedfed.json").read_text())
    assert meta["state_digest"] == summary["digest"] and meta["round"] == 4

    # the run's ledger, dumped to a file, verifies and rebuilds the same model
    ledger = out / "run.ledger"
    dump = seedfed("ledger", "dump", "--db", f"sqlite:///{out / 'coordinator.db'}", "-o", str(ledger))
    assert dump.returncode == 0, dump.stderr
    spec, records = read_ledger_file(ledger)
    assert spec.task_id == "demo" and len(records) == 4
    ev = seedfed(
        "eval", "--ledger", str(ledger), "--model", str(out / "export"), "--data", str(out / "data" / "eval.tsv"), "--json"
    )
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["accuracy"] == pytest.approx(summary["accuracy_after"])


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    r = seedfed("simulate", "--clients", "0", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "--clients" in r.stderr
    r = seedfed("simulate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "y"), "--prepare-only")
    assert r.returncode != 0 and "not a local model directory" in r.stderr
