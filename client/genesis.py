"""Building a task genesis for a base model (what ``seedfed init`` writes)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from typing import Any

from seedfed.client.engine.manifest import ManifestError
from seedfed.client.model import open_base
from seedfed.shared.taskspec import Objective, TaskSpec, TaskSpecError


def genesis_for_model(
    model_ref: str,
    task_id: str,
    objective: Objective,
    *,
    task_seed: int | None = None,
    unit_log2: int | None = None,
    **fields: Any,
) -> TaskSpec:
    """Read the base model into a host master (streamed from its safetensors files, tensor by
    tensor), describe it (manifest digest, fixed-point unit, base digest) and return the
    validated genesis; ``fields`` set any other genesis field. A local directory is recorded as
    an absolute path, so clients on the same machine find it from any working directory."""
    seed = task_seed if task_seed is not None else secrets.randbits(32)
    base = open_base(model_ref, objective.kind)
    try:
        base.manifest.spans(fields.get("trainable", ()))
    except ManifestError as exc:
        raise TaskSpecError(str(exc)) from None
    desc = base.describe(seed, unit_log2)
    reference = os.path.abspath(model_ref) if os.path.isdir(model_ref) else model_ref
    raw = {
        "task_id": task_id,
        "base_model": reference,
        "base_digest": desc.base_digest,
        "manifest_digest": desc.manifest_digest,
        "unit_log2": desc.unit_log2,
        "task_seed": seed,
        "objective": dataclasses.asdict(objective),
        **fields,
    }
    return TaskSpec.from_dict(raw)
