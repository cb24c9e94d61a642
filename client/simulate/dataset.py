"""The data of a simulation: a user's file or generated examples, the task's
label names, and the share files each client reads.

Classification labels are named by ``--labels`` or read from the data: the
distinct values of the label column, sorted ignoring case. Labels that are
all integers are indices into names only ``--labels`` can give.
Causal language modelling takes Dolly-15k style instruction records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seedfed.client.data import (
    DataError,
    Instruction,
    LabelledText,
    distinct_labels,
    read_classification,
    read_instructions,
)
from seedfed.client.simulate.sample_data import LABEL_NAMES, make_examples, make_instructions, write_jsonl, write_tsv

GENERATED_CLASSIFICATION = 1200
GENERATED_INSTRUCTIONS = 600
GENERATED_TEMPLATE = "a {label} review"  # the generated reviews' label descriptions
DATA_TEMPLATE = "{label}"  # a user's labels are described by their names unless --template says otherwise


def share_suffix(kind: str) -> str:
    """The format of an objective's share files: TSV for labelled text, JSON lines for instructions."""
    return ".tsv" if kind == "classification" else ".jsonl"


@dataclass(frozen=True)
class SimulationData:
    kind: str  # the objective: classification or causal_lm
    examples: tuple[LabelledText, ...] | tuple[Instruction, ...]
    labels: tuple[str, ...] = ()  # classification: the genesis's label names, in index order
    unused_labels: tuple[str, ...] = ()  # named by --labels, but no example carries them
    template: str = ""  # classification: how a label is described to the model
    source: str = ""  # where the examples came from, for people

    def strata(self) -> list[int]:
        """What a Dirichlet split shares out unevenly: the label of every example."""
        if self.kind != "classification":
            raise DataError("a Dirichlet split shares labels out unevenly, and instruction data has none: use --split iid")
        return [ex.label for ex in self.examples]

    def shuffled(self, rng) -> SimulationData:
        examples = list(self.examples)
        rng.shuffle(examples)
        return dataclasses.replace(self, examples=tuple(examples))

    def write(self, path: Path, indices: Sequence[int]) -> None:
        """The examples at ``indices`` as a file the client reads (labels as indices)."""
        chosen = [self.examples[i] for i in indices]
        if self.kind == "classification":
            write_tsv(path, [(ex.text, ex.label) for ex in chosen])
        else:
            write_jsonl(path, [dataclasses.asdict(ex) for ex in chosen])


def load_data(
    kind: str, path: Path | None, labels: Sequence[str] = (), template: str | None = None, seed: int = 0
) -> SimulationData:
    """The examples of a simulation (generated under ``seed`` when there is no file) and how the
    task names them; a clear ``DataError`` for a file the task cannot use."""
    if kind == "classification":
        return _classification(path, tuple(labels), template, seed)
    if labels or template is not None:
        raise DataError("--labels and --template describe classification labels; a causal_lm task has none")
    if path is None:
        records = make_instructions(GENERATED_INSTRUCTIONS, seed=seed)
        return SimulationData(kind, tuple(Instruction(**r) for r in records), source="generated instructions")
    return SimulationData(kind, tuple(read_instructions(path)), source=str(path))


def _classification(path: Path | None, given: tuple[str, ...], template: str | None, seed: int) -> SimulationData:
    if template is not None and "{label}" not in template and "{text}" not in template:
        raise DataError(f"--template {template!r} must contain {{label}}: otherwise every label reads the same")
    if path is None:
        if given:
            raise DataError("--labels names the labels of a --data file; the generated reviews are negative,positive")
        rows = make_examples(GENERATED_CLASSIFICATION, seed=seed)
        examples = tuple(LabelledText(text, label) for text, label in rows)
        return SimulationData(
            "classification", examples, LABEL_NAMES, template=template or GENERATED_TEMPLATE, source="generated reviews"
        )
    if given:
        _check_given(given)
        names = given
    else:
        names = distinct_labels(path)
        if all(_is_index(v) for v in names):
            raise DataError(
                f"{path}: the labels are indices ({', '.join(names)}); name them in index order with --labels, "
                "e.g. --labels negative,positive"
            )
    examples = tuple(read_classification(path, names))
    used = sorted({ex.label for ex in examples})
    if len(used) < 2:
        raise DataError(
            f"{path}: every example has the label {names[used[0]]!r}; a classification task needs examples of at least two labels"
        )
    unused = tuple(name for i, name in enumerate(names) if i not in used)
    return SimulationData("classification", examples, names, unused, template=template or DATA_TEMPLATE, source=str(path))


def _check_given(given: tuple[str, ...]) -> None:
    if len(given) < 2:
        raise DataError(f"--labels names {len(given)} label(s); a classification task needs at least two")
    lowered = [name.lower() for name in given]
    repeated = sorted({name for name in lowered if lowered.count(name) > 1})
    if repeated:
        raise DataError(f"--labels names {', '.join(repeated)} more than once (labels match ignoring case)")


def _is_index(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def parse_labels(raw: str | None) -> tuple[str, ...]:
    """``--labels a,b,c`` as names, surrounding spaces dropped."""
    if raw is None:
        return ()
    names = tuple(part.strip() for part in raw.split(","))
    if any(not name for name in names):
        raise DataError(f"--labels {raw!r} has an empty name")
    return names
