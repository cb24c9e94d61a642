"""``seedfed init`` sets the aggregation against a faulty minority, and refuses
a rule that cannot outvote the minority it is told to expect."""

from __future__ import annotations

from click.testing import CliRunner

from seedfed.client.cli import init_task
from seedfed.shared.taskspec import TaskSpec


def init(bert_dir, out, *args: str):  # noqa: ANN001, ANN201
    base = ["--model", str(bert_dir), "--task-id", "robust", "--labels", "negative,positive", "--task-seed", "3", "-o", str(out)]
    return CliRunner().invoke(init_task, [*base, *args])


def test_trim_fraction_below_the_minority_is_refused_naming_both(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    out = tmp_path / "task.toml"
    r = init(
        bert_dir, out, "--aggregation", "trimmed_mean", "--trim-fraction", "0.2", "--byzantine-clients", "2", "--min-clients", "6"
    )
    assert r.exit_code != 0
    assert "trim_fraction 0.2" in r.output and "byzantine_clients 2" in r.output and "2/6" in r.output, r.output
    assert not out.exists()
    r = init(
        bert_dir,
        out,
        "--aggregation",
        "trimmed_mean",
        "--trim-fraction",
        "0.34",
        "--byzantine-clients",
        "2",
        "--min-clients",
        "6",
    )
    assert r.exit_code == 0, r.output
    spec = TaskSpec.load_toml(out)
    assert (spec.aggregation, spec.trim_fraction, spec.byzantine_clients, spec.min_clients) == ("trimmed_mean", 0.34, 2, 6)


def test_mean_with_a_faulty_minority_is_refused(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    r = init(bert_dir, tmp_path / "t.toml", "--byzantine-clients", "1", "--min-clients", "4")
    assert r.exit_code != 0 and "mean tolerates no faulty client" in r.output, r.output


def test_screened_mean_takes_the_adaptive_scale(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    out = tmp_path / "task.toml"
    r = init(bert_dir, out, "--aggregation", "screened_mean", "--byzantine-clients", "2", "--min-clients", "6")
    assert r.exit_code == 0, r.output
    spec = TaskSpec.load_toml(out)
    assert (spec.aggregation, spec.scale_rule, spec.byzantine_clients) == ("screened_mean", "adaptive", 2)
    r = init(bert_dir, out, "--force", "--aggregation", "screened_mean", "--scale-rule", "fixed")
    assert r.exit_code != 0 and "scale_rule adaptive" in r.output, r.output


def test_step_rule_warmup_and_schedule_reach_the_genesis(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    out = tmp_path / "task.toml"
    args = ("--step-rule", "spread", "--warmup-rounds", "20", "--lr-schedule", "cosine", "--set", "max_rounds=400")
    guard = ("--guard-rounds", "50", "--set", "guard_z=3", "--set", "guard_return=window_start", "--set", "guard_remeasure=true")
    r = init(bert_dir, out, *args, *guard)
    assert r.exit_code == 0, r.output
    spec = TaskSpec.load_toml(out)
    assert (spec.step_rule, spec.warmup_rounds, spec.lr_schedule, spec.max_rounds) == ("spread", 20, "cosine", 400)
    assert (spec.guard_rounds, spec.guard_z, spec.guard_return, spec.guard_remeasure) == (50, 3.0, "window_start", True)
    r = init(bert_dir, out, "--force", "--step-rule", "adam")
    assert r.exit_code != 0 and "--step-rule" in r.output, r.output
    r = init(bert_dir, out, "--force", "--guard-rounds", "-1")
    assert r.exit_code != 0 and "guard_rounds" in r.output, r.output


def test_weighting_reaches_the_genesis_and_examples_needs_a_weighted_rule(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    out = tmp_path / "task.toml"
    r = init(bert_dir, out)
    assert r.exit_code == 0, r.output
    assert TaskSpec.load_toml(out).weighting == "equal"  # the default
    r = init(bert_dir, out, "--force", "--weighting", "examples", "--aggregation", "screened_mean")
    assert r.exit_code == 0, r.output
    assert (TaskSpec.load_toml(out).weighting, TaskSpec.load_toml(out).aggregation) == ("examples", "screened_mean")
    r = init(bert_dir, out, "--force", "--weighting", "examples", "--aggregation", "median")
    assert r.exit_code != 0 and "weighting examples needs an aggregation of" in r.output, r.output
    assert TaskSpec.load_toml(out).aggregation == "screened_mean"  # the refused command left the file as it was


def test_trainable_reaches_the_genesis_and_a_pattern_matching_nothing_is_refused(tmp_path, engine, bert_dir) -> None:  # noqa: ANN001
    out = tmp_path / "task.toml"
    r = init(bert_dir, out, "--trainable", "*bias", "--trainable", "*LayerNorm.weight")
    assert r.exit_code == 0, r.output
    assert TaskSpec.load_toml(out).trainable == ("*bias", "*LayerNorm.weight")
    r = init(bert_dir, out, "--force", "--trainable", "*Bias")
    assert r.exit_code != 0 and "'*Bias' matches none" in r.output, r.output
    assert TaskSpec.load_toml(out).trainable == ("*bias", "*LayerNorm.weight")  # the refused command left the file alone
