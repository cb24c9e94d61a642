"""Loading the base model and describing it for a genesis.

The class loaded depends on the objective: a bare encoder/decoder
(``AutoModel``) for classification, which scores label descriptions with the
model's own embeddings, and ``AutoModelForCausalLM`` for language modelling.
The task's parameters are exactly the loaded module's ``named_parameters()``,
so ``seedfed init`` and every client must load the same class: both go
through ``load_base``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


class ModelLoadError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a clear error when the device is not there."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {name!r} requested but no CUDA device is visible")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise ModelLoadError(f"device {name!r}: use cpu, cuda or cuda:N")
    return device


@dataclass
class BaseModel:
    module: torch.nn.Module
    tokenizer: Any
    reference: str


def load_base(reference: str, objective_kind: str, device: torch.device | str = "cpu") -> BaseModel:
    """The base model in float32 (the fixed-point master is derived from these bytes), in eval mode
    (zeroth-order probes must be deterministic: no dropout)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModelForCausalLM if objective_kind == "causal_lm" else AutoModel
    local = os.path.isdir(reference)
    try:
        module = cls.from_pretrained(reference, dtype=torch.float32, local_files_only=local)
        tokenizer = AutoTokenizer.from_pretrained(reference, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {reference!r}: {exc}") from None
    if tokenizer.pad_token is None:
        # Decoders (GPT-2) have no pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    module.eval()
    module.requires_grad_(False)
    return BaseModel(module.to(device), tokenizer, reference)


@dataclass(frozen=True)
class BaseDescription:
    manifest_digest: str
    base_digest: str
    unit_log2: int
    parameters: int


def describe_base(module: torch.nn.Module, task_seed: int, unit_log2: int | None = None) -> BaseDescription:
    """What a genesis records about its base: manifest digest, fixed-point unit, base digest."""
    from seedfed.client.engine.manifest import Manifest
    from seedfed.client.engine.state import FixedPointState, choose_unit_log2

    manifest = Manifest.from_module(module)
    if unit_log2 is None:
        unit_log2 = choose_unit_log2(module)
    state = FixedPointState.from_module(module, unit_log2, task_seed, device="cpu")
    return BaseDescription(manifest.digest(), state.digest(), unit_log2, manifest.total)
