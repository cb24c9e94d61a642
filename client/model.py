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

from seedfed.client.engine.errors import ModelLoadError, UnitRangeError
from seedfed.client.engine.manifest import Manifest

__all__ = [
    "BaseModel",
    "BaseSource",
    "BaseDescription",
    "ModelLoadError",
    "describe_base",
    "load_base",
    "open_base",
    "resolve_device",
]


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
    local = os.path.isdir(reference)
    try:
        module = _model_class(objective_kind).from_pretrained(reference, dtype=torch.float32, local_files_only=local)
        tokenizer = _load_tokenizer(reference, local)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {reference!r}: {exc}") from None
    module.eval()
    module.requires_grad_(False)
    return BaseModel(module.to(device), tokenizer, reference)


def _model_class(objective_kind: str):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if objective_kind == "causal_lm" else AutoModel


def _load_tokenizer(reference: str, local: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reference, local_files_only=local)
    if tokenizer.pad_token is None:
        # Decoders (GPT-2) have no pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class BaseSource:
    """A base model ready to fill a master: a directory with safetensors files is read tensor by
    tensor into a module built without weights (``files`` set); anything else (a .bin checkpoint,
    a hub id) is loaded whole in float32, as ``load_base`` does (``files`` None). The module is
    the one to bind compute weights to; the weights themselves are read from the files each
    time a master is filled."""

    def __init__(self, module: torch.nn.Module, tokenizer: Any, reference: str, files: Any, objective_kind: str) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.reference = reference
        self.files = files  # seedfed.client.engine.safetensors_io.CheckpointFiles | None
        self.objective_kind = objective_kind
        # fixed now, before binding compute weights changes the parameters' dtype (float32, as the base is described)
        self.manifest = Manifest.from_module(module)
        # a whole-loaded module holds the base weights until compute weights are bound to it
        self._whole: torch.nn.Module | None = module if files is None else None

    @property
    def streamed(self) -> bool:
        return self.files is not None

    def load_state(self, task_seed: int, unit_log2: int | None = None, device="cpu", *, pin_memory: bool = False, out=None):
        """The master W0 (a new FixedPointState on ``device``, or written into ``out``); ``unit_log2``
        None: chosen from the weights. Raises ModelLoadError naming the file, tensor or memory."""
        from seedfed.client.engine.loading import stream_state
        from seedfed.client.engine.memory import require_memory
        from seedfed.client.engine.state import FixedPointState, StateOverflowError, choose_unit_log2

        manifest = self.manifest
        if self.files is not None:
            return stream_state(self.module, self.files, task_seed, unit_log2, device=device, pin_memory=pin_memory, out=out)
        whole, self._whole = self._whole, None  # used once: binding compute weights will overwrite it
        if whole is None:
            whole = load_base(self.reference, self.objective_kind, "cpu").module
        if unit_log2 is None:
            try:
                unit_log2 = choose_unit_log2(whole)
            except ValueError as exc:
                raise ModelLoadError(f"{self.reference}: {exc}") from None
        if out is None:
            require_memory(4 * manifest.total, torch.device(device), f"the int32 master of {manifest.total:,} parameters")
        try:
            state = FixedPointState.from_module(whole, unit_log2, task_seed, device=device if out is None else out.device)
        except StateOverflowError as exc:
            raise UnitRangeError(f"{self.reference}: {exc}") from None
        if out is None:
            if pin_memory and state.device.type == "cpu":
                state = FixedPointState(state.flat.pin_memory(), state.manifest, state.unit_log2, state.task_seed)
            return state
        if out.manifest != state.manifest or out.unit_log2 != unit_log2:
            raise ModelLoadError("the state to fill holds another model or unit")
        out.flat.copy_(state.flat)
        return out

    def describe(self, task_seed: int, unit_log2: int | None = None) -> BaseDescription:
        """What a genesis records about this base, from one read of its weights into a host master."""
        state = self.load_state(task_seed, unit_log2, "cpu")
        return BaseDescription(state.manifest.digest(), state.digest(), state.unit_log2, state.manifest.total)


def open_base(reference: str, objective_kind: str) -> BaseSource:
    """The base model's module (built without weights where it can be streamed), tokenizer and
    files, in eval mode and without gradients. Same module class and parameters as ``load_base``."""
    from seedfed.client.engine.safetensors_io import CheckpointFiles

    files = CheckpointFiles.find(reference) if os.path.isdir(reference) else None
    if files is None:
        base = load_base(reference, objective_kind, "cpu")
        return BaseSource(base.module, base.tokenizer, reference, None, objective_kind)
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(reference, local_files_only=True)
        tokenizer = _load_tokenizer(reference, True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {reference!r}: {exc}") from None
    # Parameters on the meta device (no memory), buffers real: rotary tables and position ids are
    # computed by the constructor, and a checkpoint's persistent buffers replace them on load.
    with init_empty_weights(include_buffers=False):
        module = _model_class(objective_kind).from_config(config, dtype=torch.float32)
    module.tie_weights()  # from_pretrained ties after loading; the manifest counts a tied weight once
    module.eval()
    module.requires_grad_(False)
    return BaseSource(module, tokenizer, reference, files, objective_kind)


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
