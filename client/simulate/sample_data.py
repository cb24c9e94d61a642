"""Small labelled sentiment data the demo and tests generate themselves.

Short review-like sentences from word lists, labelled 0 (negative) or 1
(positive), with neutral filler so that the label is not one fixed token.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

POSITIVE = [
    "wonderful",
    "delightful",
    "moving",
    "brilliant",
    "charming",
    "gripping",
    "funny",
    "beautiful",
    "clever",
    "heartfelt",
    "superb",
    "warm",
]
NEGATIVE = [
    "dull",
    "tedious",
    "clumsy",
    "boring",
    "lifeless",
    "shallow",
    "bland",
    "awkward",
    "tiresome",
    "messy",
    "forgettable",
    "flat",
]
SUBJECTS = [
    "the film",
    "this movie",
    "the story",
    "the acting",
    "the script",
    "the ending",
    "the soundtrack",
    "the director's work",
    "the cast",
    "the plot",
]
TEMPLATES = [
    "{s} is {a} .",
    "{s} feels {a} from start to finish .",
    "honestly , {s} was {a} .",
    "{s} turns out {a} and {a2} .",
    "i found {s} {a} .",
    "what a {a} experience ; {s} is {a2} .",
]
LABEL_NAMES = ("negative", "positive")
_CELL_BREAKS = re.compile(r"[\t\r\n]+")


def make_examples(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = POSITIVE if label else NEGATIVE
        a, a2 = rng.sample(words, 2)
        text = rng.choice(TEMPLATES).format(s=rng.choice(SUBJECTS), a=a, a2=a2)
        out.append((text, label))
    return out


def write_tsv(path: str | Path, rows: list[tuple[str, int]]) -> None:
    """``sentence<TAB>label`` rows as the client's reader reads them: quote characters are
    literal there (SST-2 style, no CSV quoting), so none is added, and the tabs and line
    breaks a cell cannot hold become spaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, quotechar=None)
        w.writerow(["sentence", "label"])
        w.writerows((_CELL_BREAKS.sub(" ", text), label) for text, label in rows)
