"""Small transformers built locally from configs, for machines without a
model hub: the demo's encoder, and the models tests and benchmarks run on.

Three architectures: ``bert`` (an encoder, classification by similarity),
``gpt2`` and ``llama`` (causal LMs). ``tiny_module`` gives a module in memory;
``save_tiny_model`` writes a model directory with a word-level tokenizer over
the given texts, loadable like any Hugging Face model directory. Weights are a
seeded random init that leaves the caller's global generator as it was, so
every build with the same arguments is the same model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ARCHS = ("bert", "gpt2", "llama")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EOS]")
# how the tokenizer splits text (BERT's pre-tokenizer: words and single punctuation marks)
_WORD = re.compile(r"\w+|[^\w\s]")


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}: one of {', '.join(ARCHS)}")


def tiny_config(
    arch: str, vocab_size: int = 96, hidden: int = 32, layers: int = 2, heads: int = 2, positions: int = 64, **overrides: Any
):
    """A transformers config of ``arch``; ``overrides`` are the config's own field names."""
    _check_arch(arch)
    if arch == "bert":
        from transformers import BertConfig

        fields = dict(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=positions,
        )
        return BertConfig(**(fields | overrides))
    if arch == "gpt2":
        from transformers import GPT2Config

        fields = dict(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions)
        return GPT2Config(**(fields | overrides))
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
    )
    return LlamaConfig(**(fields | overrides))


def module_from_config(config, seed: int = 0):
    """The model class for ``config`` (an encoder for BERT, a causal LM otherwise),
    randomly initialised under ``seed``, in eval mode."""
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    cls = BertModel if isinstance(config, BertConfig) else GPT2LMHeadModel if isinstance(config, GPT2Config) else LlamaForCausalLM
    # A reproducible base, without disturbing the caller's global generator.
    with torch.random.fork_rng():
        torch.random.manual_seed(seed)
        model = cls(config)
    return model.eval()


def tiny_module(arch: str = "gpt2", seed: int = 0, **config: Any):
    """A tiny model in memory; ``config`` as for ``tiny_config``."""
    return module_from_config(tiny_config(arch, **config), seed)


def vocabulary(texts: Iterable[str]) -> list[str]:
    """The sorted words and punctuation marks of ``texts``, lowercased, as the tokenizer splits them."""
    return sorted({w for t in texts for w in _WORD.findall(t.lower())})


def word_tokenizer(texts: Iterable[str], arch: str):
    """A word-level fast tokenizer over the words of ``texts`` (unknown words map to [UNK]).
    BERT's wraps each text in [CLS] ... [SEP]; the causal LMs' end with [EOS] and pad with [PAD]."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    _check_arch(arch)
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *vocabulary(texts)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = dict(unk_token="[UNK]", pad_token="[PAD]")
    if arch == "bert":
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        specials |= dict(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        specials |= dict(eos_token="[EOS]", bos_token="[EOS]")
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def save_tiny_model(directory: str | Path, arch: str, texts: Iterable[str], seed: int = 0, **config: Any) -> Path:
    """A model directory (weights, config, tokenizer over ``texts``).
    The vocabulary is the tokenizer's unless ``config`` asks for a larger one."""
    directory = Path(directory)
    tokenizer = word_tokenizer(texts, arch)
    vocab_size = config.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    if arch != "bert":
        eos = tokenizer.eos_token_id
        config = dict(bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id) | config
    model = module_from_config(tiny_config(arch, vocab_size=vocab_size, **config), seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_encoder(directory: str | Path, texts: Iterable[str], hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """The demo's base when no pretrained model is installed: a BERT over the words of ``texts``."""
    return save_tiny_model(directory, "bert", texts, seed=seed, hidden=hidden, layers=layers, positions=128)


def build_tiny_causal_lm(
    directory: str | Path, texts: Iterable[str], hidden: int = 64, layers: int = 2, positions: int = 256, seed: int = 0
) -> Path:
    """A simulation's causal-LM base when no model is given: a Llama over the words of ``texts``."""
    return save_tiny_model(directory, "llama", texts, seed=seed, hidden=hidden, layers=layers, positions=positions)
