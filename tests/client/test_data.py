from __future__ import annotations

import json

import pytest
from helpers import write_classification, write_dolly

from seedfed.client.data import DataError, MinibatchSampler, read_classification, read_examples, read_instructions

LABELS = ("negative", "positive")


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl"])
def test_classification_formats_agree(tmp_path, suffix):
    path = write_classification(tmp_path / f"d.{suffix}", n=20, seed=3)
    reference = read_classification(write_classification(tmp_path / "ref.tsv", n=20, seed=3), LABELS)
    got = read_classification(path, LABELS)
    assert got == reference
    assert {ex.label for ex in got} <= {0, 1}


def test_labels_by_name_and_quotes(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text('sentence\tlabel\nit \'s a "charming" film\tPositive\nbleak\tnegative\nok\t1\n')
    got = read_classification(p, LABELS)
    assert [ex.label for ex in got] == [1, 0, 1]
    assert got[0].text == 'it \'s a "charming" film'


@pytest.mark.parametrize(
    "body, message",
    [
        ("sentence\tlabel\nfine\t7\n", "outside 0..1"),
        ("sentence\tlabel\nfine\tmaybe\n", "neither an index"),
        ("words\tlabel\nfine\t1\n", "no text column"),
        ("sentence\tscore\nfine\t1\n", "no 'label' column"),
        ("sentence\tlabel\n", "no examples"),
    ],
)
def test_classification_errors_name_the_problem(tmp_path, body, message):
    p = tmp_path / "bad.tsv"
    p.write_text(body)
    with pytest.raises(DataError, match=message):
        read_classification(p, LABELS)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown data format"):
        read_classification(tmp_path / "x.parquet", LABELS)
    with pytest.raises(DataError, match="cannot read"):
        read_classification(tmp_path / "missing.tsv", LABELS)


def test_dolly_reader(tmp_path):
    p = write_dolly(tmp_path / "d.jsonl", n=5)
    got = read_instructions(p)
    assert len(got) == 5 and got[1].context == "" and got[0].context
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*response"):
        read_examples(bad, "causal_lm")


def test_sampler_covers_every_example_once_per_pass():
    sampler = MinibatchSampler(list(range(10)), batch_size=5, seed=1)
    first_pass = sampler.next_batch() + sampler.next_batch()
    assert sorted(first_pass) == list(range(10))
    again = MinibatchSampler(list(range(10)), batch_size=5, seed=1)
    assert again.next_batch() == first_pass[:5]  # local RNG: reproducible for a given seed
    other = MinibatchSampler(list(range(10)), batch_size=5, seed=2)
    assert [other.next_batch() for _ in range(4)] != [again.next_batch() for _ in range(4)]


def test_sampler_batch_larger_than_data():
    assert len(MinibatchSampler([1, 2, 3], batch_size=16).next_batch()) == 3
