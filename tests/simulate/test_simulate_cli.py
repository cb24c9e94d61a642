"""`seedfed simulate` as a user runs it: real coordinator and client processes."""

from __future__ import annotations

import csv
import json
import random
import subprocess
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer
from safetensors.torch import load_file

from seedfed.client.export import rebuild, write_model_dir
from seedfed.client.history import load_history
from seedfed.client.simulate.processes import seedfed_command
from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples, make_instructions, write_jsonl
from seedfed.client.simulate.tinymodel import build_tiny_encoder
from seedfed.server.db import make_engine
from seedfed.server.sql_store import SqlStore
from seedfed.shared.ledger import read_ledger_file
from seedfed.shared.taskspec import TaskSpec

TOPICS = {
    "World": ["election", "minister", "border", "treaty", "embassy", "parliament"],
    "Sports": ["match", "goal", "coach", "league", "stadium", "striker"],
    "Business": ["shares", "profit", "merger", "market", "investor", "bank"],
    "Science": ["telescope", "genome", "physics", "laboratory", "vaccine", "planet"],
}
FOUR_LABELS = "sports,world,science,business"  # not the data's order: the genesis must follow --labels


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
    assert (spec.step_rule, spec.lr_schedule, spec.warmup_rounds, spec.scale_rule) == ("constant", "constant", 0, "fixed")
    assert spec.guard_rounds == 0 and not {"guard_return", "guard_remeasure"} & set(spec.to_dict())


def test_step_rule_options_reach_the_task_file(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "rules"
    rules = ("--step-rule", "spread", "--lr-schedule", "cosine", "--warmup-rounds", "5", "--scale-rule", "adaptive")
    guard = ("--guard-rounds", "10", "--guard-return", "window_start", "--guard-remeasure")
    r = seedfed("simulate", "--prepare-only", "--rounds", "40", "--model", str(tiny_model), "--out", str(out), *rules, *guard)
    assert r.returncode == 0, r.stderr
    spec = TaskSpec.load_toml(out / "task.toml")
    assert spec.weighting == "equal"  # the default: each client's report counts once
    assert spec.guard_return == "window_start" and spec.guard_remeasure
    assert (spec.step_rule, spec.lr_schedule, spec.warmup_rounds, spec.scale_rule, spec.max_rounds, spec.guard_rounds) == (
        "spread",
        "cosine",
        5,
        "adaptive",
        40,
        10,
    )


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
    assert not (tmp_path / "y").exists()


def write_four_class_csv(path: Path, n: int, seed: int = 0) -> Path:
    """News-like sentences of 4 topics, labelled by topic name, as CSV."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for _ in range(n):
            topic = rng.choice(sorted(TOPICS))
            a, b = rng.sample(TOPICS[topic], 2)
            w.writerow([f"news : the {a} and the {b} , reported today", topic])
    return path


@pytest.fixture(scope="module")
def four_class(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("news")
    data = write_four_class_csv(root / "news.csv", 180)
    texts = [row["text"] for row in csv.DictReader(open(data, encoding="utf-8"))] + [lab.lower() for lab in TOPICS]
    return data, build_tiny_encoder(root / "model", texts, hidden=32)


def test_simulate_runs_a_four_class_task_from_a_labelled_file(tmp_path: Path, four_class: tuple[Path, Path]) -> None:
    data, model = four_class
    out = tmp_path / "news"
    r = seedfed(
        "simulate", "--data", str(data), "--labels", FOUR_LABELS, "--template", "news about {label}",
        "--clients", "2", "--rounds", "3", "--split", "dirichlet", "--model", str(model), "--out", str(out), "--timeout", "500",
        "--step-rule", "spread", "--scale-rule", "adaptive", "--warmup-rounds", "1", "--lr-schedule", "cosine",
        "--weighting", "examples", "--trainable", "*bias", "--trainable", "*LayerNorm.weight",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    spec, records = load_history(f"sqlite:///{out / 'coordinator.db'}", "demo", None)
    assert (spec.step_rule, spec.scale_rule, spec.warmup_rounds, spec.weighting) == ("spread", "adaptive", 1, "examples")
    # only the named parameters were tuned: the exported model keeps every other base weight
    assert spec.trainable == ("*bias", "*LayerNorm.weight")
    write_model_dir(rebuild(spec, records, str(out / "model"), to_round=0), tmp_path / "round-0")
    base, tuned = load_file(tmp_path / "round-0" / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    moved = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert moved and all(n.endswith("bias") or n.endswith("LayerNorm.weight") for n in moved), sorted(moved)
    # each client daemon claimed the examples of its share with every report
    share_sizes = sorted(len((out / "data" / f"client-{i}.tsv").read_text().splitlines()) - 1 for i in range(2))
    store = SqlStore(make_engine(f"sqlite:///{out / 'coordinator.db'}"))
    try:
        for rec in records:
            assert sorted(s.examples for s in store.committed_submissions("demo", rec.round)[1]) == share_sizes
    finally:
        store.close()
    assert any(rec.steps for rec in records)  # the spread rule's steps reached the ledger and every client
    assert spec.objective.kind == "classification"
    assert spec.objective.labels == ("sports", "world", "science", "business")
    assert spec.objective.template == "news about {label}"
    assert len(records) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["labels"] == ["sports", "world", "science", "business"]
    assert {c["digest"] for c in summary["clients"]} == {summary["digest"]} and summary["digest"]
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    assert summary["rouge_l_after"] is None
    assert "accuracy" in r.stdout and "every client holds the exported model's digest" in r.stdout
    # the shares carry every label of the file, as indices into the genesis's labels
    shares = [out / "data" / f"client-{i}.tsv" for i in range(2)] + [out / "data" / "eval.tsv"]
    labels = {line.rsplit("\t", 1)[1] for f in shares for line in f.read_text().splitlines()[1:]}
    assert labels == {"0", "1", "2", "3"}


def test_label_names_come_from_the_data_when_not_given(tmp_path: Path, four_class: tuple[Path, Path]) -> None:
    data, model = four_class
    out = tmp_path / "named"
    r = seedfed("simulate", "--prepare-only", "--data", str(data), "--clients", "2", "--model", str(model), "--out", str(out))
    assert r.returncode == 0, r.stderr
    spec = TaskSpec.load_toml(out / "task.toml")
    assert spec.objective.labels == ("Business", "Science", "Sports", "World")  # sorted ignoring case
    assert spec.objective.template == "{label}" and spec.objective.max_length == 64
    assert "labels: Business, Science, Sports, World" in r.stdout


def test_simulate_runs_causal_lm_on_instructions_and_reports_rouge_l(tmp_path: Path) -> None:
    dolly = tmp_path / "dolly.jsonl"
    write_jsonl(dolly, [r | {"category": "open_qa"} for r in make_instructions(72, seed=3)])
    out = tmp_path / "lm"
    r = seedfed(
        "simulate", "--objective", "causal_lm", "--data", str(dolly), "--clients", "2", "--rounds", "3",
        "--max-new-tokens", "8", "--out", str(out), "--timeout", "500",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Rouge-L" in r.stdout and "every client holds the exported model's digest" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "causal_lm" and summary["rounds"] == 3 and summary["eval_examples"] == 12
    assert {c["digest"] for c in summary["clients"]} == {summary["digest"]}
    assert summary["accuracy_after"] is None and summary["max_new_tokens"] == 8
    spec = TaskSpec.load_toml(out / "task.toml")
    assert spec.objective.kind == "causal_lm" and "llama" in (out / "model" / "config.json").read_text()

    # the reported Rouge-L is the mean over real generations of the held-out prompts
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (out / "data" / "eval.jsonl").read_text().splitlines()]
    assert [row["reference"] for row in rows] == [h["response"] for h in held_out] and len(rows) == 12
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for when in ("before", "after"):
        scores = [scorer.score(row["reference"], row[when])["rougeL"].fmeasure for row in rows]
        assert summary[f"rouge_l_{when}"] == pytest.approx(sum(scores) / len(scores))
        assert 0.0 <= summary[f"rouge_l_{when}"] <= 1.0
        assert any(row[when] for row in rows)

    # seedfed eval of the export gives the same Rouge-L
    ev = seedfed(
        "eval", "--model", str(out / "export"), "--task-file", str(out / "task.toml"), "--data", str(out / "data" / "eval.jsonl"),
        "--max-new-tokens", "8", "--json",
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["rouge_l"] == pytest.approx(summary["rouge_l_after"]) and result["accuracy"] is None
    assert result["loss"] == pytest.approx(summary["eval_loss_after"], rel=1e-4)


def test_data_the_task_cannot_use_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    news = write_four_class_csv(tmp_path / "news.csv", 40)
    one = tmp_path / "one.tsv"
    one.write_text("sentence\tlabel\nfine\tpositive\ngood\tpositive\n")
    dolly = tmp_path / "dolly.jsonl"
    write_jsonl(dolly, make_instructions(12))
    cases = [
        (["--data", str(news), "--labels", "world,sports,business"], "label 'Science' is neither an index nor one of"),
        (["--data", str(one)], "every example has the label 'positive'"),
        (["--data", str(one), "--labels", "negative,positive"], "every example has the label 'positive'"),
        (["--objective", "regression"], "Invalid value for '--objective'"),
        (["--objective", "causal_lm", "--data", str(dolly), "--labels", "a,b"], "a causal_lm task has none"),
        (["--objective", "causal_lm", "--data", str(dolly), "--split", "dirichlet"], "use --split iid"),
        (["--data", str(news), "--template", "a story"], "must contain {label}"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out-{i}"
        r = seedfed("simulate", "--prepare-only", "--out", str(out), *args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
        assert not out.exists(), args
