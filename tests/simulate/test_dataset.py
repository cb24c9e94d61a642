"""The data a simulation shares among its clients: label names, shares that read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seedfed.client.data import DataError, distinct_labels, read_classification, read_instructions
from seedfed.client.simulate.dataset import load_data, parse_labels
from seedfed.client.simulate.sample_data import make_instructions, write_jsonl, write_tsv


def test_a_written_share_reads_back_with_the_same_texts(tmp_path: Path) -> None:
    # SST-2 phrases hold quote characters that are not CSV quoting; tabs and line breaks cannot live in a TSV cell
    rows = [('he said "wow" , twice', 1), ("a 'quoted' word", 0), ("tab\there and\nnew line", 1), ('"', 0)]
    write_tsv(tmp_path / "share.tsv", rows)
    back = read_classification(tmp_path / "share.tsv", ("negative", "positive"))
    assert [(ex.text, ex.label) for ex in back] == [
        ('he said "wow" , twice', 1),
        ("a 'quoted' word", 0),
        ("tab here and new line", 1),
        ('"', 0),
    ]


def write_rows(path: Path, rows: list[tuple[str, object]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def test_label_names_are_read_from_the_data_sorted_ignoring_case(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "d.jsonl", [("a", "sports"), ("b", "World"), ("c", "business"), ("d", "world"), ("e", "Sci")])
    assert distinct_labels(f) == ("business", "Sci", "sports", "World")
    data = load_data("classification", f)
    assert data.labels == ("business", "Sci", "sports", "World")
    assert [ex.label for ex in data.examples] == [2, 3, 0, 3, 1]
    assert data.template == "{label}" and data.unused_labels == ()


def test_given_labels_keep_their_order_and_may_name_indices(tmp_path: Path) -> None:
    named = write_rows(tmp_path / "named.jsonl", [("a", "Sports"), ("b", "world"), ("c", "science")])
    data = load_data("classification", named, parse_labels("world, sports,business,science"), "news about {label}")
    assert data.labels == ("world", "sports", "business", "science")
    assert [ex.label for ex in data.examples] == [1, 0, 3]
    assert data.unused_labels == ("business",) and data.template == "news about {label}"
    indexed = write_rows(tmp_path / "indexed.jsonl", [("a", 0), ("b", 3), ("c", "2")])
    assert [ex.label for ex in load_data("classification", indexed, ("w", "x", "y", "z")).examples] == [0, 3, 2]


@pytest.mark.parametrize(
    ("rows", "labels", "template", "message"),
    [
        ([("a", "sports"), ("b", "weather")], "world,sports", None, r"d\.jsonl:2: label 'weather' is neither"),
        ([("a", 0), ("b", 4)], "w,x,y,z", None, r"d\.jsonl:2: label index 4 is outside 0\.\.3"),
        ([("a", "x"), ("b", "X")], None, None, "every example has the label 'x'; .* at least two labels"),
        ([("a", "x"), ("b", "x")], "x,y", None, "every example has the label 'x'"),
        ([("a", 0), ("b", 1)], None, None, r"labels are indices \(0, 1\); name them .* --labels"),
        ([("a", "x"), ("b", "y")], "x", None, "--labels names 1 label"),
        ([("a", "x"), ("b", "y")], "x,y,X", None, "--labels names x more than once"),
        ([("a", "x"), ("b", "y")], "x,,y", None, "empty name"),
        ([("a", "x"), ("b", "y")], None, "a review", "must contain {label}"),
    ],
)
def test_labels_the_task_cannot_use_are_clear_errors(tmp_path: Path, rows, labels, template, message) -> None:
    f = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_data("classification", f, parse_labels(labels), template)


def test_instruction_data_takes_no_labels_and_no_dirichlet_split(tmp_path: Path) -> None:
    f = tmp_path / "dolly.jsonl"
    write_jsonl(f, make_instructions(12, seed=1))
    data = load_data("causal_lm", f)
    assert len(data.examples) == 12 and data.labels == ()
    with pytest.raises(DataError, match="use --split iid"):
        data.strata()
    with pytest.raises(DataError, match="a causal_lm task has none"):
        load_data("causal_lm", f, ("a", "b"))


def test_shares_of_instructions_read_back_exactly(tmp_path: Path) -> None:
    records = make_instructions(30, seed=4)
    records[0] = {"instruction": 'say "hi"\tnow', "context": "line one\nline two", "response": "hi ."}
    write_jsonl(tmp_path / "all.jsonl", records)
    data = load_data("causal_lm", tmp_path / "all.jsonl")
    data.write(tmp_path / "share.jsonl", [0, 5, 29])
    assert [vars(ex) for ex in read_instructions(tmp_path / "share.jsonl")] == [records[0], records[5], records[29]]
