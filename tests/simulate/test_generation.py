"""Rouge-L of greedy generations: what `seedfed eval` and simulate report for causal_lm."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seedfed.client.data import Instruction
from seedfed.client.objectives import CausalLMObjective, rouge_l, rouge_l_score
from seedfed.client.simulate.sample_data import make_instructions
from seedfed.client.simulate.tinymodel import save_tiny_model
from seedfed.shared.taskspec import Objective


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # LCS "the cat on the mat": 5 of 6 words each way
        ("the cat lay on the mat", "the cat sat on the mat", 5 / 6),
        # LCS "the cat on mat" (4); precision 4/7, recall 4/6, F = 2PR/(P+R) = 8/13
        ("the cat was sitting on a mat", "the cat sat on the mat", 8 / 13),
        # stemmed (cats -> cat, running/runs -> run): LCS 2, precision 1, recall 2/3, F = 0.8
        ("Cats running", "the cat runs", 0.8),
        ("Paris.", "paris", 1.0),  # case and punctuation do not count
        ("", "paris", 0.0),
        ("london", "paris", 0.0),
    ],
)
def test_rouge_l_of_hand_checked_pairs(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l_score(prediction, reference) == pytest.approx(expected)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def objective(request, tmp_path_factory) -> CausalLMObjective:
    records = [Instruction(**r) for r in make_instructions(60, seed=2)]
    directory = tmp_path_factory.mktemp(request.param)
    save_tiny_model(directory, request.param, [CausalLMObjective.prompt(ex) + ex.response for ex in records], positions=96)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    return CausalLMObjective(model, AutoTokenizer.from_pretrained(directory), Objective(kind="causal_lm", max_length=64), "cpu")


def greedy_by_hand(objective: CausalLMObjective, ex: Instruction, max_new_tokens: int) -> str:
    """Argmax of the next-token logits, one token at a time, without a cache."""
    tok = objective.tokenizer
    ids = tok(objective.prompt(ex), add_special_tokens=False)["input_ids"][-objective.max_length :]
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            nxt = int(objective.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    return tok.decode(new, skip_special_tokens=True).strip()


def test_generation_is_greedy_bounded_and_the_same_in_a_batch(objective: CausalLMObjective) -> None:
    examples = [Instruction(**r) for r in make_instructions(10, seed=9)]  # prompts of different lengths: left padding
    assert len({len(objective.prompt(ex)) for ex in examples}) > 1
    batch = objective.generate(examples, 6)
    assert batch == [objective.generate([ex], 6)[0] for ex in examples]
    assert batch == [greedy_by_hand(objective, ex, 6) for ex in examples]
    assert all(len(objective.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 6 for t in batch)
    assert any(batch)


def test_generation_never_runs_past_the_models_positions(objective: CausalLMObjective) -> None:
    long = Instruction("describe " + "the sky " * 80, "", "blue")  # more tokens than the 96 positions
    (text,) = objective.generate([long], 200)
    assert len(objective.tokenizer(text, add_special_tokens=False)["input_ids"]) <= 96 - 1


def test_rouge_l_is_the_mean_over_the_generations(objective: CausalLMObjective) -> None:
    examples = [Instruction(**r) for r in make_instructions(7, seed=5)]
    result = rouge_l(objective, examples, 5, batch_size=3)
    assert list(result.texts) == objective.generate(examples, 5)
    assert list(result.scores) == [rouge_l_score(t, ex.response) for t, ex in zip(result.texts, examples)]
    assert result.rouge_l == pytest.approx(sum(result.scores) / 7) and 0.0 <= result.rouge_l <= 1.0


def test_a_perfect_generation_scores_one(objective: CausalLMObjective, monkeypatch) -> None:
    examples = [Instruction(**r) for r in make_instructions(4, seed=6)]
    monkeypatch.setattr(objective, "generate", lambda batch, n: [ex.response for ex in batch])
    assert rouge_l(objective, examples, 5).rouge_l == pytest.approx(1.0)
