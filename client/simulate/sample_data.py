"""Small data the demo and tests generate themselves, and the writers of simulation shares.

Classification: short review-like sentences from word lists, labelled 0
(negative) or 1 (positive), with neutral filler so that the label is not one
fixed token. Causal language modelling: instruction records in Dolly-15k's
fields about a fixed little world.
"""

from __future__ import annotations

import csv
import json
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


# Instruction data (Dolly-15k's fields): short questions over a fixed little world,
# so that a response is a function of its instruction and context.
COLOURS = {
    "the sky": "blue",
    "grass": "green",
    "snow": "white",
    "coal": "black",
    "a lemon": "yellow",
    "a tomato": "red",
    "an orange": "orange",
    "a plum": "purple",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "early": "late",
    "happy": "sad",
    "light": "dark",
    "open": "closed",
    "loud": "quiet",
}


def make_instructions(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` records with instruction, context (sometimes empty) and response."""
    rng = random.Random(seed)
    things, words = sorted(COLOURS), sorted(OPPOSITES)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            thing = rng.choice(things)
            out.append({"instruction": f"What colour is {thing} ?", "context": "", "response": f"{thing} is {COLOURS[thing]} ."})
        elif kind == 1:
            word = rng.choice(words)
            out.append({"instruction": f"Give the opposite of {word} .", "context": "", "response": OPPOSITES[word]})
        else:
            thing, other = rng.sample(things, 2)
            context = f"{thing} is {COLOURS[thing]} and {other} is {COLOURS[other]} ."
            out.append(
                {"instruction": f"Using the context , what colour is {other} ?", "context": context, "response": COLOURS[other]}
            )
    return out


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
