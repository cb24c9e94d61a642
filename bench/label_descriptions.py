"""Which label descriptions should a classification task score against? Chosen on training data.

The classifier scores a text by its cosine similarity to each label's description
(a template with the label's name in it), so the description sets the zero-shot
starting point of every run. This scores each candidate, unmodified model, on a
seeded sample of the training split and names the best one there; the dev set
takes no part in the choice. Its accuracy on dev is printed for the chosen
description and the default only, for the record.

    python bench/label_descriptions.py --data ../shared/data/sst2
    python bench/label_descriptions.py --smoke     # seconds: generated data, a tiny BERT

Then: python bench/quality_sst2.py --template TEMPLATE --label-names A,B ...
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import quality_sst2 as quality
import torch

from seedfed.client.data import read_classification
from seedfed.client.objectives import ClassificationObjective, accuracy_and_loss

TEMPLATES = (
    quality.TEMPLATE,
    "a {label} film",
    "a {label} movie",
    "this movie is {label}",
    "it was {label}",
    "{label}",
    "a {label} sentence",
    "{label} review",
    "the film is {label}",
)
LABEL_SETS = (quality.LABELS, ("bad", "good"), ("terrible", "great"))


def score(model, tokenizer, examples, template: str, labels: tuple[str, ...], max_length: int) -> tuple[float, float]:
    spec = quality.objective_spec(max_length, template, labels)
    return accuracy_and_loss(ClassificationObjective(model, tokenizer, spec, "cpu"), examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=quality.default_data_dir(), help="folder with train.tsv and dev.tsv")
    ap.add_argument("--sample", type=int, default=1000, help="training examples scored per candidate")
    ap.add_argument("--min-words", type=int, default=10, help="sample only training examples of at least N words")
    ap.add_argument("--seed", type=int, default=0, help="the sample's shuffle")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="a run of seconds on generated data and a tiny BERT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            data, model_dir = quality.smoke_inputs(Path(tmp))
            args.min_words = 0  # the generated sentences are short
            run(args, data, model_dir, TEMPLATES[:2], LABEL_SETS[:2])
        return
    quality.require_sst2(args.data)
    run(args, args.data, quality.minilm_dir(), TEMPLATES, LABEL_SETS)


def run(args, data: Path, model_dir: Path, templates, label_sets) -> None:
    train = quality.training_examples(data, args.min_words)
    random.Random(args.seed).shuffle(train)
    sample = train[: args.sample]
    model, tokenizer = quality.load_model(model_dir)
    start = time.perf_counter()
    scored = []
    print(f"{len(sample)} training examples of {args.min_words}+ words (shuffle seed {args.seed})")
    print("| template | label names | training accuracy | training loss |\n|---|---|---:|---:|")
    for template in templates:
        for labels in label_sets:
            acc, loss = score(model, tokenizer, sample, template, labels, args.max_length)
            scored.append((acc, -loss, template, labels))
            print(f"| '{template}' | {'/'.join(labels)} | {100 * acc:.2f}% | {loss:.4f} |", flush=True)
    best_acc, _, template, labels = max(scored)  # ties go to the lower loss
    default_acc = next(acc for acc, _, t, ls in scored if t == quality.TEMPLATE and ls == quality.LABELS)
    print(f"chosen on the training sample: --template '{template}' --label-names {','.join(labels)}")
    dev = read_classification(data / "dev.tsv", quality.LABELS)
    for what, (t, ls) in (("chosen", (template, labels)), ("default", (quality.TEMPLATE, quality.LABELS))):
        print(f"  {what}: dev accuracy {100 * score(model, tokenizer, dev, t, ls, args.max_length)[0]:.2f}%")
    print(f"{len(scored)} candidates in {time.perf_counter() - start:.0f} s")
    print(f"ratio chosen / default description, training-sample accuracy: {best_acc / default_acc:.3f}")


if __name__ == "__main__":
    main()
