"""The quality benchmark's evaluation and its loss report: the accuracy is the one
`seedfed eval` computes, and each recorded row shows its training loss beside its dev loss."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import quality_sst2
from quality_sst2 import Row

from seedfed.client.data import read_classification
from seedfed.client.objectives import ClassificationObjective, accuracy, label_texts, mean_loss


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data, model_dir = quality_sst2.smoke_inputs(tmp_path_factory.mktemp("quality"))
    model, tokenizer = quality_sst2.load_model(model_dir)
    objective = ClassificationObjective(model, tokenizer, quality_sst2.objective_spec(32), "cpu")
    return objective, read_classification(Path(data) / "dev.tsv", quality_sst2.LABELS)


def test_evaluate_gives_the_accuracy_and_loss_of_the_library(tiny) -> None:
    objective, dev = tiny
    acc, loss = quality_sst2.evaluate(objective, dev)
    assert acc == accuracy(objective, dev, batch_size=128)
    assert loss == pytest.approx(mean_loss(objective, dev), rel=1e-5)


def test_checkpoint_records_the_mean_training_loss_since_the_last_point(tiny) -> None:
    objective, dev = tiny
    row, train = Row("r"), []
    quality_sst2.checkpoint(row, 0, objective, dev, train)
    train += [0.5, float("nan"), 0.7]
    quality_sst2.checkpoint(row, 10, objective, dev, train)
    assert train == []
    assert math.isnan(row.losses[0][1])
    assert row.losses[1][:2] == (10, pytest.approx(0.6))
    assert row.curve[1][0] == 10 and row.losses[1][2] == row.losses[0][2]  # no step between: same dev loss


def test_the_loss_table_shows_rows_that_recorded_losses() -> None:
    rows = [
        Row("old row", curve=[(0, 0.7), (200, 0.72)]),
        Row("new row", curve=[(0, 0.7), (200, 0.66)], losses=[(0, math.nan, 0.584), (200, 0.5038, 0.6082)]),
    ]
    table = quality_sst2.loss_table(rows)
    assert "| new row | 0.504 / 0.608 |" in table
    assert "old row" not in table
    assert quality_sst2.loss_table(rows[:1]) == ""


def test_merge_reads_parts_written_before_losses_were_recorded(tmp_path, monkeypatch) -> None:
    import sys

    old = Row("seedfed, 8 clients, step constant, fixed scale, lr 0.0001", curve=[[0, 0.70], [200, 0.72]], final_accuracy=0.72)
    new = Row(
        "seedfed, 8 clients, step constant, fixed scale, lr 0.0001, seed 2",
        curve=[[0, 0.70], [200, 0.74]],
        final_accuracy=0.74,
        losses=[[0, math.nan, 0.58], [200, 0.51, 0.55]],
    )
    old_dict = dict(old.__dict__)
    del old_dict["losses"]  # a part file from before the field existed
    (tmp_path / "part-a.json").write_text(json.dumps([old_dict]))
    (tmp_path / "part-b.json").write_text(json.dumps([new.__dict__]))
    monkeypatch.setattr(sys, "argv", ["quality_sst2.py", "--merge", "--out", str(tmp_path)])
    quality_sst2.main()
    report = (tmp_path / "quality_sst2.md").read_text()
    assert "| 72.00% |" in report and "| 74.00% |" in report
    assert "| seedfed, 8 clients, step constant, fixed scale, lr 0.0001, seed 2 | 0.510 / 0.550 |" in report
    assert "73.00%" in report  # the two seeds' mean, in the table across seeds
    rows = json.loads((tmp_path / "quality_sst2.json").read_text())["rows"]
    assert [len(r["losses"]) for r in rows] == [0, 2]


def test_merge_keeps_one_row_per_configuration_the_latest_part_winning(tmp_path) -> None:
    name = "seedfed, 8 clients, step constant, fixed scale, lr 0.0001"
    first = Row(name, curve=[[0, 0.70], [200, 0.72]], final_accuracy=0.72)
    rerun = Row(name, curve=[[0, 0.70], [200, 0.75]], final_accuracy=0.75)
    other = Row(name + ", seed 2", curve=[[0, 0.70], [200, 0.74]], final_accuracy=0.74)
    (tmp_path / "part-00-previous.json").write_text(json.dumps([first.__dict__, other.__dict__]))
    (tmp_path / "part-rerun.json").write_text(json.dumps([rerun.__dict__]))
    rows = quality_sst2.merge_parts(tmp_path)
    assert [(r.name, r.final_accuracy) for r in rows] == [(name, 0.75), (name + ", seed 2", 0.74)]


def best_rule_args(**changes) -> argparse.Namespace:
    """The bench's arguments for the best rule without the guard, at its defaults otherwise."""
    args = argparse.Namespace(
        min_words=0, group_size=0, step_rule="spread", step_clip=1.0, warmup=100, lr_schedule="cosine",
        hypergradient=False, weighting="equal", guard_rounds=0, guard_z=2.0, guard_return="window_end",
        guard_remeasure=False, scale_rule="adaptive", lr=1e-3, pool=quality_sst2.DEFAULT_POOL,
        template=quality_sst2.TEMPLATE, label_names=quality_sst2.LABELS, trainable="",
    )  # fmt: skip
    vars(args).update(changes)
    return args


def test_a_row_with_a_seed_per_group_of_clients_or_another_pool_is_named_apart() -> None:
    # merge_parts keys rows by name: a grouped run must not replace the one-seed row
    args = best_rule_args()
    one_seed = quality_sst2.rule_label(args)
    args.group_size = 1
    per_client = quality_sst2.rule_label(args)
    args.group_size = 2
    per_pair = quality_sst2.rule_label(args)
    assert one_seed == "step spread (clip 1), warmup 100 + cosine decay, adaptive scale, lr 0.001"
    assert per_client == "a seed per client, " + one_seed
    assert per_pair == "a seed per 2 clients, " + one_seed
    args.group_size, args.pool = 0, 256
    assert quality_sst2.rule_label(args) == "K=256, " + one_seed
    args.pool, args.trainable = quality_sst2.DEFAULT_POOL, " *bias, *LayerNorm.weight"
    assert quality_sst2.trainable_patterns(args) == ("*bias", "*LayerNorm.weight")
    assert quality_sst2.rule_label(args) == "tuning *bias *LayerNorm.weight, " + one_seed


def test_a_row_scored_against_other_label_descriptions_names_them() -> None:
    args = best_rule_args(min_words=10)
    default = quality_sst2.rule_label(args)
    assert quality_sst2.named("zero-shot", args) == "zero-shot"
    args.template, args.label_names = "a {label} film", ("bad", "good")
    assert quality_sst2.rule_label(args) == "template 'a {label} film' (bad/good), " + default
    assert quality_sst2.named("zero-shot", args) == "zero-shot, template 'a {label} film' (bad/good)"
    spec = quality_sst2.objective_spec(64, args.template, args.label_names)
    assert label_texts(spec) == ["a bad film", "a good film"]
