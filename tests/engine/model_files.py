"""Model directories as real checkpoints come (bf16/fp16/fp32, sharded), and the two ways to read them."""

from __future__ import annotations

from typing import Any

import torch
import transformers


def tiny_llama(seed: int = 0, tied: bool = False, **config: Any):
    from seedfed.client.simulate.tinymodel import tiny_module

    return tiny_module("llama", seed, **({"heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": tied} | config))


def save(model, directory, dtype=torch.float32, shard_size=None):
    """``model``'s weights in ``dtype`` (the model itself is left in float32), optionally in shards."""
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.to(dtype).save_pretrained(directory, **kwargs)
    model.to(torch.float32)
    return directory


def empty_twin(directory, cls=None):
    """The model class of a directory built without weights (meta parameters), as a client builds it."""
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(directory)
    cls = cls or transformers.AutoModelForCausalLM
    with init_empty_weights(include_buffers=False):
        module = cls.from_config(config, dtype=torch.float32)
    module.tie_weights()
    return module.eval()


def full_load(directory, cls=None):
    """The whole model in float32, as ``load_base`` reads it."""
    cls = cls or transformers.AutoModelForCausalLM
    return cls.from_pretrained(directory, dtype=torch.float32).eval()


def save_bin(model, directory):
    """A directory in the older pickle format (pytorch_model.bin): no safetensors to stream."""
    from pathlib import Path

    directory = Path(directory)
    model.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in aliases}  # tied weights once
    torch.save(state, directory / "pytorch_model.bin")
    return directory
