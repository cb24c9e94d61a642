"""The data a simulation shares among its clients: label names, shares that read back exactly."""

from __future__ import annotations

from pathlib import Path

from seedfed.client.data import read_classification
from seedfed.client.simulate.sample_data import write_tsv


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
