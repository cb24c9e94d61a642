"""Base weights from safetensors files into the int32 master, tensor by tensor.

The module is built without weights (parameters on the meta device); its
parameters define the manifest. Checkpoint keys map to parameter names
exactly or through the model's ``base_model_prefix`` (a task model's
checkpoint read into a bare model, or the other way round). Pass 1 reads
every parameter for the largest |w| (the unit, by ``choose_unit_log2``'s
rule); pass 2 reads them again and rounds them into the master. Nothing but
the master and one chunk is held at any time, and the digest equals that of
a full float32 load of the same files: float64 holds every fp32/fp16/bf16
value, scaling by a power of two is exact, and both round half to even.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from seedfed.client.engine.errors import ModelLoadError, UnitRangeError
from seedfed.client.engine.manifest import Manifest, ManifestError
from seedfed.client.engine.memory import require_memory
from seedfed.client.engine.safetensors_io import FLOAT_DTYPES, CheckpointFiles, TensorEntry
from seedfed.client.engine.state import INT32_LIMIT, FixedPointState, unit_log2_for

_LEGACY_SUFFIXES = ((".gamma", ".weight"), (".beta", ".bias"))  # LayerNorm names of old checkpoints


@dataclass(frozen=True)
class CheckpointMap:
    """Which checkpoint tensor feeds each parameter slot and each persistent buffer."""

    params: dict[str, TensorEntry]  # manifest slot name -> tensor
    buffers: dict[str, TensorEntry]  # persistent buffer name -> tensor
    ignored: tuple[str, ...]  # checkpoint keys that belong to no part of this module (a task head, legacy buffers)


def _persistent_buffers(module: torch.nn.Module) -> tuple[set[str], set[str]]:
    persistent, transient = set(), set()
    for prefix, m in module.named_modules(remove_duplicate=False):
        for name, b in m._buffers.items():
            if b is None:
                continue
            full = f"{prefix}.{name}" if prefix else name
            (transient if name in m._non_persistent_buffers_set else persistent).add(full)
    return persistent, transient


def match_checkpoint(module: torch.nn.Module, manifest: Manifest, files: CheckpointFiles) -> CheckpointMap:
    """Map checkpoint keys to the module's parameters and buffers; ModelLoadError for a missing,
    unexpected, misshapen or non-float parameter tensor (naming it and its file)."""
    by_id = {id(p): name for name, p in module.named_parameters()}  # canonical name per tensor object
    canonical = {name: by_id[id(p)] for name, p in module.named_parameters(remove_duplicate=False)}
    persistent, transient = _persistent_buffers(module)
    prefix = str(getattr(module, "base_model_prefix", "") or "")
    keys = list(files.entries)
    module_prefixed = bool(prefix) and any(n.startswith(prefix + ".") for n in canonical)
    ckpt_prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in keys)
    patterns = [re.compile(p) for p in (getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ())]
    known = set(canonical) | persistent | transient

    def target(key: str) -> str | None:
        for cand in _candidates(key, prefix):
            if cand in known:
                return cand
        return None

    params: dict[str, TensorEntry] = {}
    exact: set[str] = set()
    buffers: dict[str, TensorEntry] = {}
    ignored: list[str] = []
    unexpected: list[TensorEntry] = []
    for key in keys:
        entry = files.entries[key]
        name = target(key)
        if name is None:
            head = ckpt_prefixed and not module_prefixed and not key.startswith(prefix + ".")
            if head or any(p.search(key) for p in patterns):
                ignored.append(key)
            else:
                unexpected.append(entry)
            continue
        if name in transient:
            ignored.append(key)
        elif name in persistent:
            buffers[name] = entry
        else:
            slot_name = canonical[name]
            # a tied weight saved under both names: its canonical name's tensor wins, as tying keeps that one
            if slot_name in exact and name != slot_name:
                continue
            params[slot_name] = entry
            if name == slot_name:
                exact.add(slot_name)
    if unexpected:
        e = unexpected[0]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelLoadError(
            f"{e.path}: tensor {e.key!r}{more} is not a parameter or buffer of {type(module).__name__}: "
            "the checkpoint does not fit this model's config"
        )
    missing = [s.name for s in manifest.slots if s.name not in params]
    if missing:
        raise ModelLoadError(
            f"{files.directory}: no tensor for parameter {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": the base must hold every trained parameter, or replicas would start from different weights"
        )
    for slot in manifest.slots:
        e = params[slot.name]
        if e.shape != slot.shape:
            raise ModelLoadError(
                f"{e.path}: tensor {e.key!r} has shape {list(e.shape)}, parameter {slot.name} needs {list(slot.shape)}"
            )
        if e.dtype not in FLOAT_DTYPES:
            raise ModelLoadError(
                f"{e.path}: tensor {e.key!r} is {e.dtype}; the int32 master is loaded exactly only from "
                f"{', '.join(FLOAT_DTYPES)} (dequantise the checkpoint first)"
            )
    for name, e in buffers.items():
        want = tuple(module.get_buffer(name).shape)
        if e.shape != want:
            raise ModelLoadError(f"{e.path}: tensor {e.key!r} has shape {list(e.shape)}, buffer {name} needs {list(want)}")
    return CheckpointMap(params, buffers, tuple(ignored))


def _candidates(key: str, prefix: str) -> list[str]:
    names = [key]
    if prefix:
        names += [key[len(prefix) + 1 :]] if key.startswith(prefix + ".") else [f"{prefix}.{key}"]
    for old, new in _LEGACY_SUFFIXES:
        names += [n[: -len(old)] + new for n in names if n.endswith(old)]
    return names


def _as_float(chunk: torch.Tensor) -> torch.Tensor:
    """The values a float32 load holds (float64 rounds to float32 first), as float64."""
    if chunk.dtype == torch.float64:
        chunk = chunk.to(torch.float32)
    return chunk.to(torch.float64)


def _in_file_order(cmap: CheckpointMap, manifest: Manifest) -> list[tuple[str, TensorEntry]]:
    return sorted(((s.name, cmap.params[s.name]) for s in manifest.slots), key=lambda item: (str(item[1].path), item[1].start))


def scan_max_abs(files: CheckpointFiles, cmap: CheckpointMap, manifest: Manifest) -> float:
    """Pass 1: the largest |w| over the trained parameters; ModelLoadError on NaN or infinity."""
    maxabs = 0.0
    with files.reader() as reader:
        for name, entry in _in_file_order(cmap, manifest):
            for _, chunk in reader.chunks(entry):
                m = float(chunk.to(torch.float32).abs().max()) if chunk.numel() else 0.0
                if not math.isfinite(m):
                    raise ModelLoadError(f"{entry.path}: tensor {entry.key!r} (parameter {name}) contains NaN or infinity")
                maxabs = max(maxabs, m)
    return maxabs


def fill_master(
    flat: torch.Tensor,
    files: CheckpointFiles,
    cmap: CheckpointMap,
    manifest: Manifest,
    unit_log2: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Pass 2: W = round(w / unit) into ``flat`` (any device), chunk by chunk; ModelLoadError naming
    the tensor when a weight does not fit int32 at this unit."""
    scale = math.ldexp(1.0, -int(unit_log2))
    done, total = 0, manifest.total
    with files.reader() as reader:
        for name, entry in _in_file_order(cmap, manifest):
            slot = manifest.slot(name)
            for first, chunk in reader.chunks(entry):
                w = torch.round(_as_float(chunk) * scale)
                if w.numel() and not float(w.abs().max()) <= INT32_LIMIT:  # also false for NaN
                    raise UnitRangeError(
                        f"{entry.path}: tensor {entry.key!r} (parameter {name}) does not fit the int32 master at unit "
                        f"2**{unit_log2}: the base is not the one this unit was chosen for, or use a coarser unit"
                    )
                start = slot.offset + first
                flat[start : start + w.numel()].copy_(w.to(torch.int32))
                done += w.numel()
            if progress:
                progress(done, total)


def load_buffers(module: torch.nn.Module, files: CheckpointFiles, cmap: CheckpointMap) -> None:
    """Persistent buffers the checkpoint holds replace the values the constructor computed."""
    with files.reader() as reader:
        for name, entry in cmap.buffers.items():
            buf = module.get_buffer(name)
            with torch.no_grad():
                buf.copy_(reader.read(entry).to(buf.device))


def stream_state(
    module: torch.nn.Module,
    files: CheckpointFiles,
    task_seed: int,
    unit_log2: int | None = None,
    *,
    device: torch.device | str = "cpu",
    pin_memory: bool = False,
    out: FixedPointState | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FixedPointState:
    """The master W0 of ``module`` (built without weights) from its checkpoint: a new state on
    ``device`` (in pinned host memory with ``pin_memory``), or written into ``out`` in place.
    ``unit_log2`` None: chosen from the weights (pass 1). Also loads the persistent buffers.
    The module may already be bound to compute weights (its parameters then have the compute
    dtype; names and shapes are what count)."""
    if out is not None:
        manifest = out.manifest
        try:
            manifest.check_module(module)
        except ManifestError as exc:
            raise ModelLoadError(f"the state to fill holds another model: {exc}") from None
    else:
        manifest = Manifest.from_module(module)
    cmap = match_checkpoint(module, manifest, files)
    if unit_log2 is None:
        unit_log2 = unit_log2_for(scan_max_abs(files, cmap, manifest))
    if out is not None:
        if out.unit_log2 != unit_log2:
            raise ModelLoadError(f"the state to fill has unit 2**{out.unit_log2}, not 2**{unit_log2}")
        flat = out.flat
    else:
        device = torch.device(device)
        require_memory(4 * manifest.total, device, f"the int32 master of {manifest.total:,} parameters")
        flat = torch.empty(manifest.total, dtype=torch.int32, device=device, pin_memory=pin_memory and device.type == "cpu")
    fill_master(flat, files, cmap, manifest, unit_log2, progress)
    load_buffers(module, files, cmap)
    if out is not None:
        return out
    return FixedPointState(flat, manifest, unit_log2, task_seed)
