from __future__ import annotations

import math

import pytest
import torch
from helpers import write_classification, write_dolly

from seedfed.client.data import LabelledText, read_classification, read_instructions
from seedfed.client.model import load_base
from seedfed.client.objectives import TEMPERATURE, CausalLMObjective, accuracy, build_objective, label_texts, mean_loss
from seedfed.shared.taskspec import Objective

CLS = Objective(kind="classification", labels=("negative", "positive"), template="it was {text}", max_length=32)


def test_label_template():
    assert label_texts(CLS) == ["it was negative", "it was positive"]
    assert label_texts(Objective(labels=("a", "b"), template="{label}!")) == ["a!", "b!"]


@pytest.mark.parametrize("which", ["bert_dir", "gpt2_dir"])
def test_classification_loss_and_accuracy(request, tmp_path, which):
    base = load_base(str(request.getfixturevalue(which)), "classification")
    obj = build_objective(CLS, base.module, base.tokenizer, "cpu")
    examples = read_classification(write_classification(tmp_path / "d.tsv", n=12), CLS.labels)
    logits = obj.logits([ex.text for ex in examples[:4]])
    assert logits.shape == (4, 2)
    assert float(logits.abs().max()) <= 1.0 / TEMPERATURE + 1e-3  # cosine / temperature
    loss = obj.loss(examples[:4])
    assert math.isfinite(loss) and loss > 0
    assert obj.loss(examples[:4]) == loss  # eval mode: deterministic
    # labelled with the model's own predictions, then with the other label for the first half:
    # batches of 5 over 12 examples, so a miscounted batch boundary shows
    predicted = [obj.predict([ex.text])[0] for ex in examples]
    agree = [LabelledText(ex.text, p) for ex, p in zip(examples, predicted)]
    assert accuracy(obj, agree, batch_size=5) == 1.0
    half = [LabelledText(ex.text, 1 - ex.label) if i < 6 else ex for i, ex in enumerate(agree)]
    assert accuracy(obj, half, batch_size=5) == 0.5
    assert accuracy(obj, [LabelledText(ex.text, 1 - ex.label) for ex in agree], batch_size=5) == 0.0
    assert math.isclose(mean_loss(obj, examples[:4], batch_size=4), loss, rel_tol=1e-6)


def test_causal_lm_loss_only_on_response(gpt2_dir, tmp_path):
    base = load_base(str(gpt2_dir), "causal_lm")
    spec = Objective(kind="causal_lm", max_length=48)
    obj = build_objective(spec, base.module, base.tokenizer, "cpu")
    assert isinstance(obj, CausalLMObjective)
    examples = read_instructions(write_dolly(tmp_path / "d.jsonl", n=4))
    enc = obj.encode(examples)
    for i, ex in enumerate(examples):
        labelled = enc["labels"][i][enc["labels"][i] != -100].tolist()
        response = base.tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [base.tokenizer.eos_token_id]
        assert labelled == response
    assert enc["input_ids"].shape[1] <= 48
    loss = obj.loss(examples)
    assert math.isfinite(loss)
    # the model's own shifted loss over the same labels agrees
    with torch.inference_mode():
        ref = base.module(**enc).loss
    assert math.isclose(loss, float(ref), rel_tol=1e-5)


def test_causal_lm_truncation_keeps_a_response(gpt2_dir):
    from seedfed.client.data import Instruction

    base = load_base(str(gpt2_dir), "causal_lm")
    obj = build_objective(Objective(kind="causal_lm", max_length=8), base.module, base.tokenizer, "cpu")
    enc = obj.encode([Instruction("what " * 30, "the " * 30, "good film " * 10)])
    assert enc["input_ids"].shape[1] <= 8
    assert (enc["labels"] != -100).sum() >= 1
    assert math.isfinite(obj.loss([Instruction("what " * 30, "the " * 30, "good film " * 10)]))
