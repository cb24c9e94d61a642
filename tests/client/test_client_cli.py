from __future__ import annotations

from click.testing import CliRunner

from seedfed.client.cli import init_task
from seedfed.client.model import describe_base, load_base
from seedfed.shared.taskspec import TaskSpec


def test_init_writes_a_loadable_genesis(tmp_path, engine, bert_dir):
    out = tmp_path / "task.toml"
    result = CliRunner().invoke(
        init_task,
        [
            "--model",
            str(bert_dir),
            "--task-id",
            "sst2-demo",
            "--labels",
            "negative, positive",
            "--task-seed",
            "11",
            "--pool-size",
            "64",
            "--set",
            "digest_every=2",
            "--set",
            "aggregation=median",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    spec = TaskSpec.load_toml(out)
    assert spec.objective.labels == ("negative", "positive") and spec.pool_size == 64 and spec.digest_every == 2
    assert spec.aggregation == "median" and spec.task_seed == 11 and spec.base_model == str(bert_dir.resolve())
    desc = describe_base(load_base(str(bert_dir), "classification").module, 11, spec.unit_log2)
    assert (spec.base_digest, spec.manifest_digest) == (desc.base_digest, desc.manifest_digest)
    assert spec.base_digest in result.output
    again = CliRunner().invoke(init_task, ["--model", str(bert_dir), "--task-id", "x", "--labels", "a,b", "-o", str(out)])
    assert again.exit_code != 0 and "--force" in again.output


def test_init_refuses_bad_input(tmp_path, engine, gpt2_dir):
    r = CliRunner().invoke(init_task, ["--model", str(gpt2_dir), "--task-id", "t", "-o", str(tmp_path / "a.toml")])
    assert r.exit_code != 0 and "--labels" in r.output
    r = CliRunner().invoke(
        init_task,
        [
            "--model",
            str(gpt2_dir),
            "--task-id",
            "t",
            "--objective",
            "causal_lm",
            "--set",
            "nonsense=1",
            "-o",
            str(tmp_path / "b.toml"),
        ],
    )
    assert r.exit_code != 0 and "nonsense" in r.output
    r = CliRunner().invoke(
        init_task,
        ["--model", str(tmp_path / "missing"), "--task-id", "t", "--objective", "causal_lm", "-o", str(tmp_path / "c.toml")],
    )
    assert r.exit_code != 0 and "cannot load model" in r.output
    r = CliRunner().invoke(
        init_task, ["--model", str(gpt2_dir), "--task-id", "t", "--objective", "causal_lm", "-o", str(tmp_path / "d.toml")]
    )
    assert r.exit_code == 0, r.output
    assert TaskSpec.load_toml(tmp_path / "d.toml").objective.kind == "causal_lm"


def test_client_refuses_fields_the_coordinator_would_refuse(tmp_path):
    from seedfed.client.cli import client

    data = tmp_path / "d.tsv"
    data.write_text("good\t1\n")
    base = ["--coordinator", "127.0.0.1:1", "--data", str(data), "--cache", str(tmp_path / "c"), "--insecure"]
    r = CliRunner().invoke(client, [*base, "--task", "no spaces"])
    assert r.exit_code == 2 and "task_id" in r.output and "1-64 of" in r.output
    r = CliRunner().invoke(client, [*base, "--task", "t", "--name", "-leading-dash"])
    assert r.exit_code == 2 and "name" in r.output and "starting with a letter or digit" in r.output
    assert not (tmp_path / "c").exists()  # refused before the cache is made
