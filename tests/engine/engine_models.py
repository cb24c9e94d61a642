"""Tiny transformers built from configs for the engine tests (no model hub)."""

from __future__ import annotations

import torch
import transformers


def tiny_gpt2(seed: int = 0):
    torch.manual_seed(seed)  # test fixture only: a fixed random base model
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=96,
        max_position_embeddings=32,
    )
    return transformers.BertModel(cfg).eval()
