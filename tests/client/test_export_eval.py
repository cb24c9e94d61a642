"""``seedfed export`` and ``seedfed eval`` on a ledger file: which round they rebuild.

Round 0 is the base (before any committed round); leaving --round out means the head.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from helpers import write_classification

from seedfed.client.evaluate import eval_command
from seedfed.client.export import export_command
from seedfed.client.model import load_base
from seedfed.client.replica import Replica
from seedfed.shared.ledger import make_record, write_ledger_file

ROUNDS = 4


@pytest.fixture(scope="module")
def ledger(tmp_path_factory, bert_spec):
    """A ledger whose rounds move the weights far enough to change the loss."""
    rng = random.Random(3)
    head, records = bert_spec.genesis_hash(), []
    for r in range(1, ROUNDS + 1):
        rec = make_record(head, r, {rng.randrange(bert_spec.pool_size): rng.choice([-1, 1]) * 4000 for _ in range(4)})
        records.append(rec)
        head = rec.hash
    path = tmp_path_factory.mktemp("ledger") / "task.ledger"
    write_ledger_file(path, bert_spec, records)
    return path, records


def digest_at(spec, model_dir, records) -> str:
    replica = Replica.from_base(spec, load_base(str(model_dir), spec.objective.kind).module)
    replica.catch_up(records, fold_history=False)
    return replica.digest()


def export(ledger_path, out, *round_args) -> dict:
    result = CliRunner().invoke(export_command, ["--ledger", str(ledger_path), *round_args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "seedfed.json").read_text())


def test_export_round_zero_is_the_base_and_no_round_is_the_head(tmp_path, bert_spec, bert_dir, ledger):
    path, records = ledger
    base = export(path, tmp_path / "r0", "--round", "0")
    assert base["round"] == 0 and base["state_digest"] == bert_spec.base_digest
    assert base["ledger_hash"] == bert_spec.genesis_hash().hex()
    middle = export(path, tmp_path / "r2", "--round", "2")
    assert middle["round"] == 2 and middle["state_digest"] == digest_at(bert_spec, bert_dir, records[:2])
    head = export(path, tmp_path / "head")
    assert head["round"] == ROUNDS and head["state_digest"] == digest_at(bert_spec, bert_dir, records)
    assert len({base["state_digest"], middle["state_digest"], head["state_digest"]}) == 3
    beyond = CliRunner().invoke(export_command, ["--ledger", str(path), "--round", str(ROUNDS + 1), "-o", str(tmp_path / "x")])
    assert beyond.exit_code != 0 and f"ledger ends at round {ROUNDS}" in beyond.output
    assert not (tmp_path / "x").exists()


def evaluate(*args) -> dict:
    result = CliRunner().invoke(eval_command, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_eval_round_zero_is_the_base_and_no_round_is_the_head(tmp_path, bert_spec, ledger):
    path, _ = ledger
    data = write_classification(tmp_path / "eval.tsv", n=24, seed=5)
    at0 = evaluate("--ledger", str(path), "--data", str(data), "--round", "0")
    at_head = evaluate("--ledger", str(path), "--data", str(data))
    assert at0["model"] == f"task {bert_spec.task_id} round 0"
    assert at_head["model"] == f"task {bert_spec.task_id} round {ROUNDS}"
    # the same numbers as the exported directories of those rounds, and the rounds differ
    base_dir = tmp_path / "base"
    export(path, base_dir, "--round", "0")
    head_dir = tmp_path / "head"
    export(path, head_dir)
    assert evaluate("--model", str(base_dir), "--ledger", str(path), "--data", str(data))["loss"] == at0["loss"]
    assert evaluate("--model", str(head_dir), "--ledger", str(path), "--data", str(data))["loss"] == at_head["loss"]
    assert at0["loss"] != at_head["loss"]


def test_eval_of_a_model_directory_refuses_a_round(tmp_path, bert_dir, ledger):
    path, _ = ledger
    data = write_classification(tmp_path / "eval.tsv", n=8)
    result = CliRunner().invoke(
        eval_command, ["--model", str(bert_dir), "--ledger", str(path), "--data", str(data), "--round", "0"]
    )
    assert result.exit_code != 0 and "--round" in result.output
