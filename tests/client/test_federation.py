"""End to end with real processes: the coordinator (``seedfed coordinator``) and
client daemons (``seedfed client``) on tiny BERT and GPT-2 models over loopback."""

from __future__ import annotations

import signal

import pytest
from helpers import model_spec, wait_until, write_classification, write_dolly
from procs import Client, Coordinator

pytestmark = pytest.mark.slow


def _task_file(workdir, spec):
    path = workdir / "task.toml"
    path.write_text(spec.to_toml())
    return path


def test_bert_federation_digests_restart_late_joiner_wrong_base(tmp_path, engine, bert_dir, other_bert_dir):
    spec = model_spec(bert_dir, task_id="fed-bert", min_clients=2, max_rounds=10, round_deadline_s=20.0)
    coord = Coordinator(tmp_path, _task_file(tmp_path, spec)).start()
    data = [write_classification(tmp_path / f"d{i}.tsv", n=24, seed=i) for i in range(3)]
    c1 = Client(tmp_path, "c1", coord, spec.task_id, data[0], extra=("--until-round", "10", "--checkpoint-every", "3")).start()
    c2 = Client(tmp_path, "c2", coord, spec.task_id, data[1], extra=("--until-round", "10", "--checkpoint-every", "3")).start()
    try:
        # the coordinator dies mid-run and comes back on the same database: no user action on the clients
        wait_until(lambda: min(c1.head(), c2.head()) >= 3, 120, "three rounds on both clients")
        coord.kill()
        coord.start()
        assert c1.wait(180) == 0, c1.log()
        assert c2.wait(60) == 0, c2.log()
        d1, d2 = c1.digests(), c2.digests()
        common = sorted(set(d1) & set(d2))
        assert 10 in common and len(common) >= 6, (d1, d2)
        assert all(d1[r] == d2[r] for r in common), "replicas diverged"
        assert len(set(d1.values())) == len(d1)  # every round moved the weights
        assert c1.events("reconnecting") and c2.events("reconnecting")
        assert c1.events("submitted") and c2.events("submitted")
        assert c1.events("stopped")[-1]["round"] == 10

        # a client that joins after all ten rounds reaches the same digest, folding the history
        c3 = Client(tmp_path, "c3", coord, spec.task_id, data[2], extra=("--until-round", "10")).start()
        assert c3.wait(120) == 0, c3.log()
        cu = c3.events("caught_up")[0]
        assert (cu["first_round"], cu["last_round"], cu["rounds"]) == (1, 10, 10)
        assert cu["folded"] and cu["replays"] <= spec.pool_size
        assert cu["digest"] == d1[10]

        # the wrong base model is refused with both digests named
        c4 = Client(tmp_path, "c4", coord, spec.task_id, data[2], extra=("--model", str(other_bert_dir))).start()
        assert c4.wait(120) != 0
        log = c4.log()
        assert spec.base_digest in log and "has digest" in log, log
        assert not c4.events("joined")
    finally:
        for c in (c1, c2):
            c.kill()
        coord.stop()


def test_gpt2_client_killed_resumes_from_checkpoint(tmp_path, engine, gpt2_dir):
    spec = model_spec(gpt2_dir, task_id="fed-gpt2", kind="causal_lm", min_clients=1, max_rounds=5000, round_deadline_s=10.0)
    coord = Coordinator(tmp_path, _task_file(tmp_path, spec), lease_seconds=2.0).start()
    data = [write_dolly(tmp_path / f"d{i}.jsonl", n=16, seed=i) for i in range(2)]
    c1 = Client(tmp_path, "c1", coord, spec.task_id, data[0], extra=("--checkpoint-every", "2")).start()
    c2 = Client(tmp_path, "c2", coord, spec.task_id, data[1], extra=("--checkpoint-every", "2")).start()
    try:
        wait_until(lambda: c1.head() >= 6 and c2.head() >= 6, 120, "six rounds")
        c1.kill()  # SIGKILL: no Leave, no final checkpoint
        dead_head = c1.head()
        saved = max(e["round"] for e in c1.events("checkpoint"))
        wait_until(lambda: c2.head() >= dead_head + 10, 120, "ten rounds without c1")
        before = len(c1.events())
        c1.start()
        wait_until(lambda: any(e["event"] == "submitted" for e in c1.events()[before:]), 120, "c1 working again")
        c2.signal(signal.SIGTERM)
        c1.signal(signal.SIGTERM)
        assert c2.wait(60) == 0 and c1.wait(60) == 0, c1.log() + c2.log()
        second_life = c1.events()[before:]
        resumed = [e for e in second_life if e["event"] == "resumed"][0]
        assert resumed["source"] == "checkpoint" and resumed["round"] >= saved
        cu = [e for e in second_life if e["event"] == "caught_up"][0]
        # only the rounds after the checkpoint were replayed
        assert cu["first_round"] == resumed["round"] + 1 and cu["rounds"] == cu["last_round"] - resumed["round"] >= 10
        d1 = {e["round"]: e["digest"] for e in second_life if e["event"] == "round" and e.get("digest")}
        d1[cu["last_round"]] = cu["digest"]
        d2 = c2.digests()
        common = sorted(set(d1) & set(d2))
        assert len(common) >= 2 and all(d1[r] == d2[r] for r in common)
        for c in (c1, c2):
            stopped = c.events("stopped")[-1]
            assert stopped["round"] >= cu["last_round"]
            assert any(e["round"] == stopped["round"] for e in c.events("checkpoint"))  # checkpoint on exit
    finally:
        for c in (c1, c2):
            c.kill()
        coord.stop()
