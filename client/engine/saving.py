"""The master written out as a float32 safetensors checkpoint, tensor by tensor.

Each parameter is w = float32(W) * unit (the weights every replica computes
with in float32), written chunk by chunk: no float copy of the model exists
at any time. Persistent buffers are written as the module holds them, and
the tensor names are the manifest's (a tied weight once, under its first
name), as ``save_pretrained`` names them, so any loader reads the result.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seedfed.client.engine.loading import _persistent_buffers
from seedfed.client.engine.safetensors_io import (
    INDEX_FILE,
    SafetensorsWriter,
    TensorSpec,
    plan_shards,
    shard_names,
    write_index,
)
from seedfed.client.engine.state import FixedPointState

MAX_SHARD_BYTES = 5 << 30
_CHUNK = 1 << 22  # elements converted at a time


def write_float_checkpoint(
    state: FixedPointState, module: torch.nn.Module, directory: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """model.safetensors (or shards of at most ``max_shard_bytes``, default MAX_SHARD_BYTES, plus an
    index) in ``directory``; returns the files written."""
    directory = Path(directory)
    persistent, _ = _persistent_buffers(module)
    buffers = {name: module.get_buffer(name) for name in sorted(persistent)}
    specs = [TensorSpec(s.name, torch.float32, s.shape) for s in state.manifest.slots]
    specs += [TensorSpec(name, b.dtype, tuple(b.shape)) for name, b in buffers.items()]
    shards = plan_shards(specs, MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes)
    names = shard_names(len(shards))
    unit = torch.tensor(state.unit, dtype=torch.float32)
    written = []
    for shard, name in zip(shards, names):
        writer = SafetensorsWriter(directory / name, shard, {"format": "pt"})
        try:
            for spec in shard:
                if spec.key in buffers:
                    writer.write(buffers[spec.key].detach().cpu())
                    continue
                slot = state.manifest.slot(spec.key)
                for start in range(slot.offset, slot.end, _CHUNK):
                    part = state.flat[start : min(start + _CHUNK, slot.end)].cpu()
                    writer.write(part.to(torch.float32) * unit)  # exact product: the rounding is the cast's
        except BaseException:
            writer.abort()
            (directory / name).unlink(missing_ok=True)
            raise
        writer.close()
        written.append(directory / name)
    if len(shards) > 1:
        write_index(directory, shards, names)
    else:  # an index left by an earlier, sharded write would name files that are not this model
        (directory / INDEX_FILE).unlink(missing_ok=True)
    return written
