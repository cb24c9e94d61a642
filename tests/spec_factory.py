"""The task genesis most coordinator tests start from, with overrides."""

from __future__ import annotations

import dataclasses
from typing import Any

from seedfed.shared.taskspec import Objective, TaskSpec

BASE_DIGEST = "ab" * 32


def make_spec(**overrides: Any) -> TaskSpec:
    base = TaskSpec(
        task_id="t1",
        base_model="tiny-model",
        base_digest=BASE_DIGEST,
        manifest_digest="cd" * 32,
        unit_log2=-20,
        task_seed=12345,
        objective=Objective(kind="classification", labels=("negative", "positive")),
        lr=1e-3,
        pool_size=64,
        local_steps=4,
        min_clients=1,
        round_deadline_s=5.0,
    )
    # through the canonical form, so that 60 and 60.0 give one genesis hash
    return TaskSpec.from_canonical(dataclasses.replace(base, **overrides).canonical_bytes())
