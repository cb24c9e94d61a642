"""Tiny models, tokenizers and data files built locally (no model hub), for client tests.

Reusable by other test suites: ``make_gpt2(dir)``, ``make_bert(dir)``,
``write_classification(path, n, seed)``, ``write_dolly(path, n, seed)``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ["good", "great", "lovely", "fine", "happy", "charming", "bright", "warm"]
NEGATIVE = ["bad", "awful", "dull", "poor", "sad", "bleak", "grim", "cold"]
FILLER = ["the", "a", "film", "movie", "story", "was", "is", "very", "quite", "and", "it", "plot", "acting", "music"]
LABELS = ("negative", "positive")
WORDS = sorted(
    set(
        POSITIVE
        + NEGATIVE
        + FILLER
        + list(LABELS)
        + ["instruction", "context", "response", "what", "why", "how", "answer", "#", ":", "###"]
    )
)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]"]


def sentence(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
    words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
    return " ".join(words)


def write_classification(path: str | Path, n: int = 64, seed: int = 0, fmt: str | None = None) -> Path:
    """sentence<TAB>label rows (SST-2 layout), or CSV/JSONL by suffix."""
    path = Path(path)
    rng = random.Random(seed)
    rows = [(sentence(rng, lab), lab) for lab in (rng.randint(0, 1) for _ in range(n))]
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    elif fmt == "csv":
        path.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    else:
        path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows))
    return path


def write_dolly(path: str | Path, n: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        lines.append(
            json.dumps(
                {
                    "instruction": f"what is the {rng.choice(FILLER)} {rng.choice(FILLER)}",
                    "context": "" if i % 2 else sentence(rng, i % 2),
                    "response": sentence(rng, rng.randint(0, 1)),
                    "category": "open_qa",
                }
            )
        )
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]", bos_token="[EOS]"
    ), len(vocab)


def make_gpt2(directory: str | Path, seed: int = 0, n_embd: int = 32, n_layer: int = 2) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    tokenizer, vocab_size = _word_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_bert(directory: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS[:5] + WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(SPECIALS[:5]) + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
