"""Local training data: readers for the two task types and the minibatch sampler.

Data is read from a local file and never leaves the device; only the scalars
computed from it are sent. Readers are strict about the columns they need and
name the file and line of anything they cannot use.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMN = "label"


class DataError(ValueError):
    """A data file that cannot be used for the task."""


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int  # index into the genesis's objective.labels


@dataclass(frozen=True)
class Instruction:
    """One Dolly-15k style record; the loss is taken on ``response`` only."""

    instruction: str
    context: str
    response: str


def _label_index(raw: Any, labels: Sequence[str], where: str) -> int:
    """A label is an index (0, 1, ... or "0", "1") or one of the label names (case-insensitive)."""
    if isinstance(raw, bool):
        raise DataError(f"{where}: label {raw!r} is not an index or a label name")
    if isinstance(raw, int):
        idx = raw
    elif isinstance(raw, float) and raw.is_integer():
        idx = int(raw)
    elif isinstance(raw, str):
        s = raw.strip()
        lowered = [lab.lower() for lab in labels]
        if s.lower() in lowered:
            return lowered.index(s.lower())
        try:
            idx = int(s)
        except ValueError:
            raise DataError(f"{where}: label {raw!r} is neither an index nor one of {list(labels)}") from None
    else:
        raise DataError(f"{where}: label {raw!r} is not an index or a label name")
    if not 0 <= idx < len(labels):
        raise DataError(f"{where}: label index {idx} is outside 0..{len(labels) - 1} ({len(labels)} labels)")
    return idx


def _text_of(row: dict[str, Any], where: str) -> str:
    for col in TEXT_COLUMNS:
        if col in row and row[col] is not None:
            return str(row[col])
    raise DataError(f"{where}: no text column (expected one of {', '.join(TEXT_COLUMNS)})")


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) pairs from a TSV, CSV or JSON-lines file, chosen by suffix."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            out = []
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise DataError(f"{path}:{i}: not valid JSON: {exc}") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{i}: each line must be a JSON object")
                    out.append((f"{path}:{i}", row))
            return out
        if suffix in (".tsv", ".csv", ".txt"):
            delimiter = "," if suffix == ".csv" else "\t"
            with open(path, encoding="utf-8", newline="") as fh:
                # SST-2 phrases contain quote characters that are not CSV quoting
                reader = csv.DictReader(
                    fh, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
                )
                return [(f"{path}:{i}", row) for i, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None
    raise DataError(f"{path}: unknown data format {suffix!r} (use .tsv, .csv or .jsonl)")


def read_classification(path: str | Path, labels: Sequence[str]) -> list[LabelledText]:
    """Text and label columns (``text`` or ``sentence``, and ``label``) from TSV, CSV or JSONL."""
    path = Path(path)
    out = []
    for where, row in _rows(path):
        if LABEL_COLUMN not in row or row[LABEL_COLUMN] in (None, ""):
            raise DataError(f"{where}: no {LABEL_COLUMN!r} column")
        out.append(LabelledText(_text_of(row, where).strip(), _label_index(row[LABEL_COLUMN], labels, where)))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def distinct_labels(path: str | Path) -> tuple[str, ...]:
    """The distinct values of a labelled file's label column, in a stable order: sorted
    ignoring case. Values that differ only in case are one label (as the reader matches
    names), spelt as first written."""
    path = Path(path)
    seen: dict[str, str] = {}
    for where, row in _rows(path):
        raw = row.get(LABEL_COLUMN)
        if raw is None or raw == "":
            raise DataError(f"{where}: no {LABEL_COLUMN!r} column")
        if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
            raise DataError(f"{where}: label {raw!r} is not an index or a label name")
        value = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw).strip()
        seen.setdefault(value.lower(), value)
    if not seen:
        raise DataError(f"{path}: no examples")
    return tuple(seen[k] for k in sorted(seen))


def read_instructions(path: str | Path) -> list[Instruction]:
    """Dolly-15k JSON lines: instruction, optional context, response."""
    path = Path(path)
    out = []
    for where, row in _rows(path):
        if "instruction" not in row or "response" not in row:
            raise DataError(f"{where}: an instruction record needs 'instruction' and 'response'")
        out.append(Instruction(str(row["instruction"]), str(row.get("context") or ""), str(row["response"])))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def read_examples(path: str | Path, objective_kind: str, labels: Sequence[str] = ()) -> list[Any]:
    if objective_kind == "classification":
        return read_classification(path, labels)
    if objective_kind == "causal_lm":
        return read_instructions(path)
    raise DataError(f"unknown objective kind {objective_kind!r}")


class MinibatchSampler:
    """Shuffled passes over the local examples with a local RNG.

    Every example is seen once per pass; the generator is private to the
    device, so the draws need not (and do not) match any other replica.
    """

    def __init__(self, examples: Sequence[Any], batch_size: int, seed: int = 0) -> None:
        if not examples:
            raise DataError("no examples to sample from")
        self._examples = list(examples)
        self._batch_size = min(batch_size, len(self._examples))
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def next_batch(self) -> list[Any]:
        batch = []
        while len(batch) < self._batch_size:
            if not self._order:
                self._order = list(range(len(self._examples)))
                self._rng.shuffle(self._order)
            batch.append(self._examples[self._order.pop()])
        return batch
