"""The loss every replica optimises, defined by the genesis's ``objective``.

classification: the model embeds each text and each label description (mean
pooling over the last hidden state); the logits are the cosine similarities
divided by a fixed temperature, the loss is cross-entropy. A pretrained
sentence encoder therefore starts as its own zero-shot classifier, and no
new (randomly initialised) head is needed, so the parameters are exactly the
base model's.

causal_lm: instruction records are laid out as a prompt followed by the
response; the loss is the next-token cross-entropy on the response tokens
only. Evaluation also generates a response greedily from each prompt and
scores it against the reference by Rouge-L.

Loss functions run under ``torch.inference_mode``: zeroth-order training
needs forward passes only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from seedfed.client.data import Instruction, LabelledText
from seedfed.shared.taskspec import Objective as ObjectiveSpec

TEMPERATURE = 0.05  # cosine similarity in [-1, 1] -> logits in [-20, 20]
PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n{context}### Response:\n"
CONTEXT_TEMPLATE = "### Context:\n{context}\n\n"


class Objective(Protocol):
    def loss(self, batch: Sequence[Any]) -> float: ...


def label_texts(spec: ObjectiveSpec) -> list[str]:
    """The label descriptions the classifier scores: each label through the template
    (``{text}`` or ``{label}`` stands for the label)."""
    return [spec.template.replace("{label}", lab).replace("{text}", lab) for lab in spec.labels]


class ClassificationObjective:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: ObjectiveSpec, device: torch.device | str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.labels = label_texts(spec)
        self.max_length = spec.max_length
        self.device = torch.device(device)

    def _pooled(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model(**enc)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:  # a model with a head: ask for its hidden states instead
            hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1]
        mask = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
        summed = (hidden.to(torch.float32) * mask).sum(dim=1)
        return F.normalize(summed / mask.sum(dim=1).clamp(min=1.0), dim=-1)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        # Texts and label descriptions in one forward pass: the labels move with the weights.
        pooled = self._pooled(list(texts) + self.labels)
        n = len(texts)
        return pooled[:n] @ pooled[n:].T / TEMPERATURE

    @torch.inference_mode()
    def loss(self, batch: Sequence[LabelledText]) -> float:
        logits = self.logits([ex.text for ex in batch])
        target = torch.tensor([ex.label for ex in batch], device=logits.device)
        return float(F.cross_entropy(logits, target))

    @torch.inference_mode()
    def example_losses(self, batch: Sequence[LabelledText]) -> list[float]:
        """The loss of each example, from one forward pass over the whole batch."""
        logits = self.logits([ex.text for ex in batch])
        target = torch.tensor([ex.label for ex in batch], device=logits.device)
        return F.cross_entropy(logits, target, reduction="none").tolist()

    @torch.inference_mode()
    def predict(self, texts: Sequence[str]) -> list[int]:
        return self.logits(texts).argmax(dim=-1).tolist()


class CausalLMObjective:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: ObjectiveSpec, device: torch.device | str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = spec.max_length
        self.device = torch.device(device)

    @staticmethod
    def prompt(ex: Instruction) -> str:
        context = CONTEXT_TEMPLATE.format(context=ex.context) if ex.context.strip() else ""
        return PROMPT_TEMPLATE.format(instruction=ex.instruction, context=context)

    def encode(self, batch: Sequence[Instruction]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and labels (-100 outside the response), right-padded."""
        tok = self.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        rows: list[tuple[list[int], list[int]]] = []
        for ex in batch:
            prompt = tok(self.prompt(ex), add_special_tokens=False)["input_ids"]
            response = tok(ex.response, add_special_tokens=False)["input_ids"] + eos
            # Keep at least half the window for the response, so every example has a loss.
            room_prompt = max(self.max_length - len(response), self.max_length // 2)
            prompt = prompt[-room_prompt:] if room_prompt > 0 else []
            response = response[: max(self.max_length - len(prompt), 1)]
            rows.append((prompt, response))
        width = max(len(p) + len(r) for p, r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(p) : len(seq)] = torch.tensor(r)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "labels": labels.to(self.device)}

    @torch.inference_mode()
    def loss(self, batch: Sequence[Instruction]) -> float:
        enc = self.encode(batch)
        logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        # Shift: token t predicts token t+1; cross-entropy in float32 whatever the compute dtype.
        return float(
            F.cross_entropy(logits[:, :-1].flatten(0, 1).to(torch.float32), enc["labels"][:, 1:].flatten(), ignore_index=-100)
        )

    @torch.inference_mode()
    def generate(self, batch: Sequence[Instruction], max_new_tokens: int) -> list[str]:
        """The greedy response to each prompt, up to its end-of-sequence token or ``max_new_tokens``.
        Prompts keep their last ``max_length`` tokens (as ``encode`` does) and, with the
        response, never run past the model's positions."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        positions = _positions(self.model)
        keep = max(min(self.max_length, positions - max_new_tokens), 1)
        prompts = [tok(self.prompt(ex), add_special_tokens=False)["input_ids"][-keep:] for ex in batch]
        width = max(len(p) for p in prompts)
        new_tokens = min(max_new_tokens, positions - width)
        if new_tokens < 1:
            return [""] * len(batch)
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos if eos is not None else 0
        # Left padding: every prompt ends where generation starts.
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
        config = GenerationConfig(
            max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos, bos_token_id=eos
        )
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config)
        texts = []
        for row in out[:, width:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(tok.decode(row, skip_special_tokens=True).strip())
        return texts


def _positions(model: torch.nn.Module) -> int:
    """How many token positions the model can attend over (a large bound for models without one)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 20


def build_objective(
    spec: ObjectiveSpec, model: torch.nn.Module, tokenizer: Any, device: torch.device | str
) -> ClassificationObjective | CausalLMObjective:
    if spec.kind == "classification":
        return ClassificationObjective(model, tokenizer, spec, device)
    if spec.kind == "causal_lm":
        return CausalLMObjective(model, tokenizer, spec, device)
    raise ValueError(f"unknown objective kind {spec.kind!r}")


def accuracy(objective: ClassificationObjective, examples: Sequence[LabelledText], batch_size: int = 64) -> float:
    """Fraction of examples whose highest-scoring label description is their label."""
    correct = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        predicted = objective.predict([ex.text for ex in chunk])
        correct += sum(int(p == ex.label) for p, ex in zip(predicted, chunk))
    return correct / max(len(examples), 1)


@torch.inference_mode()
def accuracy_and_loss(
    objective: ClassificationObjective, examples: Sequence[LabelledText], batch_size: int = 128
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy together, from one forward pass per batch."""
    correct, total = 0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        logits = objective.logits([ex.text for ex in chunk])
        target = torch.tensor([ex.label for ex in chunk], device=logits.device)
        correct += int((logits.argmax(dim=-1) == target).sum())
        total += float(F.cross_entropy(logits, target, reduction="sum"))
    return correct / max(len(examples), 1), total / max(len(examples), 1)


def mean_loss(objective: Objective, examples: Sequence[Any], batch_size: int = 32) -> float:
    """Example-weighted mean loss over a whole data set (evaluation)."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        total += objective.loss(chunk) * len(chunk)
        count += len(chunk)
    return total / max(count, 1)


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_score(prediction: str, reference: str) -> float:
    """Rouge-L F-measure of one generated text against its reference, by the rouge-score
    package: lower-cased words of [a-z0-9] with the Porter stemmer, as FedKSeed and the
    Natural Instructions benchmark score (text in other scripts has no such words and scores 0)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@dataclass(frozen=True)
class Generated:
    rouge_l: float  # the mean over the examples
    texts: tuple[str, ...]  # the generated responses, in example order
    scores: tuple[float, ...]  # each one's Rouge-L against its reference


def rouge_l(
    objective: CausalLMObjective,
    examples: Sequence[Instruction],
    max_new_tokens: int,
    batch_size: int = 16,
) -> Generated:
    """Greedy responses to the examples' prompts, scored against their references."""
    texts: list[str] = []
    for i in range(0, len(examples), batch_size):
        texts += objective.generate(examples[i : i + batch_size], max_new_tokens)
    scores = tuple(rouge_l_score(t, ex.response) for t, ex in zip(texts, examples))
    return Generated(sum(scores) / max(len(scores), 1), tuple(texts), scores)
