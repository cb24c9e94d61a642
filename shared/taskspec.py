"""The task genesis: every parameter of a run that a replica needs to rebuild
the model from base weights plus ledger, fixed when the task is created.

The genesis travels and is hashed as canonical JSON, so the coordinator and
every client agree on its bytes without sharing Python classes; its hash is
the root of the ledger's hash chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedfed.shared.philox import GENERATOR_ID

AGGREGATIONS = ("mean", "median", "trimmed_mean", "screened_mean")
WEIGHTINGS = ("equal", "examples")
WEIGHTED_AGGREGATIONS = ("mean", "screened_mean")  # the rules that take a weight per report
SCALE_RULES = ("fixed", "adaptive")
SAMPLINGS = ("uniform", "fedkseed_pro")
SCHEDULES = ("constant", "linear", "cosine")
STEP_RULES = ("constant", "spread")
GUARD_RETURNS = ("window_end", "window_start")  # where a loss guard's rollback takes the weights
DISTRIBUTIONS = ("rademacher",)
MAX_TRAINABLE_PATTERNS = 1024
OBJECTIVES = ("causal_lm", "classification")
# A task id: also a wire field (seedfed.shared.wire.TASK_ID) and a 64-wide column.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TASK_ID_RULE = "1-64 of [A-Za-z0-9_.-], starting with a letter or digit"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def genesis_hash_of(canonical: bytes) -> bytes:
    """The hash that names a genesis: sha256 over a domain tag and its canonical bytes."""
    return hashlib.sha256(b"seedfed-genesis-v1\0" + canonical).digest()


class TaskSpecError(ValueError):
    """A task file or genesis that cannot describe a valid run."""


@dataclass(frozen=True)
class Objective:
    """What the loss is: the same for every client, so it belongs to the genesis."""

    kind: str = "classification"
    # classification: one natural-language description per label, scored by the model
    labels: tuple[str, ...] = ()
    template: str = "{text}"
    max_length: int = 128


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    base_model: str
    base_digest: str
    manifest_digest: str
    unit_log2: int  # the fixed-point unit is 2**unit_log2
    task_seed: int  # 32-bit key word of the generator
    objective: Objective = field(default_factory=Objective)
    # shell-style patterns over parameter names (fnmatchcase): the weights the run tunes, the rest
    # stay the base's (z is 0 there). Empty: all of them.
    trainable: tuple[str, ...] = ()
    generator: str = GENERATOR_ID
    distribution: str = "rademacher"
    eps: float = 1e-3
    lr: float = 1e-5
    lr_schedule: str = "constant"
    max_rounds: int = 0  # 0: open-ended; also the horizon of decaying schedules
    warmup_rounds: int = 0  # the lr rises linearly over these first rounds, then follows lr_schedule
    step_rule: str = "constant"  # spread: each round's steps are divided by the typical size of its scalars
    step_clip: float = 1.0  # spread: each report is clipped at this many spreads before it is aggregated (0: no clip)
    guard_rounds: int = 0  # the loss guard's window (0: off): a window whose loss rose rolls back and halves the lr
    guard_z: float = 4.0  # the loss guard: how many standard errors above the best window's loss count as a rise
    guard_return: str = "window_end"  # the loss guard: a rollback returns to the best window's end or its start
    guard_remeasure: bool = False  # the loss guard: after a rollback, the next window is the reference, not the best
    pool_size: int = 4096  # K; 0 means unbounded seeds
    local_steps: int = 1  # seeds each client probes per round
    group_size: int = 0  # clients that probe the same seeds; 0 means all clients of the round
    batch_size: int = 16
    scalar_scale: float = 0.05  # one byte b carries the scalar b * scale (adaptive: in the first round)
    scale_rule: str = "fixed"  # adaptive: each round's scale follows the bytes of the round before
    scale_target: int = 8  # adaptive: the median |byte| the scale aims at
    aggregation: str = "mean"
    # examples: each report counts by the training examples its client holds (FedAvg), so the run
    # minimises the loss over all clients' data instead of the mean of their losses
    weighting: str = "equal"
    trim_fraction: float = 0.2
    byzantine_clients: int = 0  # the minority of faulty clients the aggregation must tolerate
    screen_rounds: int = 10  # screened_mean: the rounds a client's outlyingness is measured over
    screen_threshold: float = 3.0  # screened_mean: the outlyingness beyond which a client's reports are left out
    screen_clip: float = 6.0  # screened_mean: reports are clipped to the median +- this many typical distances
    min_clients: int = 1
    round_deadline_s: float = 60.0
    sampling: str = "uniform"
    digest_every: int = 5

    def __post_init__(self) -> None:
        # 60 and 60.0 must give the same canonical bytes (and genesis hash)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if str(f.type) == "float" and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))

    # -- derived -----------------------------------------------------------------
    @property
    def unit(self) -> float:
        return math.ldexp(1.0, self.unit_log2)

    @property
    def weighs_by_examples(self) -> bool:
        """Reports count by their clients' example claims, which are then required and stored."""
        return self.weighting == "examples"

    def lr_at(self, round_no: int) -> float:
        """Learning rate of round ``round_no`` (1-based): a linear warmup over
        warmup_rounds, then the schedule's decay over the rounds left to max_rounds."""
        if round_no <= self.warmup_rounds:
            return self.lr * round_no / (self.warmup_rounds + 1)
        if self.lr_schedule == "constant" or self.max_rounds <= self.warmup_rounds:
            return self.lr
        progress = min((round_no - 1 - self.warmup_rounds) / (self.max_rounds - self.warmup_rounds), 1.0)
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - progress)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    # -- validation ----------------------------------------------------------------
    def validate(self) -> TaskSpec:
        problems: list[str] = []

        def need(ok: bool, msg: str) -> None:
            if not ok:
                problems.append(msg)

        need(bool(TASK_ID_PATTERN.fullmatch(self.task_id)), f"task_id {self.task_id!r} must be {TASK_ID_RULE}")
        need(0 < len(self.base_model) <= 512, "base_model must be a non-empty path or id")
        need(bool(_HEX64.fullmatch(self.base_digest)), "base_digest must be 64 lowercase hex digits")
        need(bool(_HEX64.fullmatch(self.manifest_digest)), "manifest_digest must be 64 lowercase hex digits")
        need(-60 <= self.unit_log2 <= 0, f"unit_log2 {self.unit_log2} must lie in [-60, 0]")
        need(0 <= self.task_seed < 2**32, "task_seed must be a 32-bit unsigned integer")
        need(self.generator == GENERATOR_ID, f"generator must be {GENERATOR_ID!r}")
        need(self.distribution in DISTRIBUTIONS, f"distribution must be one of {DISTRIBUTIONS}")
        need(math.isfinite(self.eps) and self.eps > 0, "eps must be a positive number")
        need(math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number")
        need(self.lr_schedule in SCHEDULES, f"lr_schedule must be one of {SCHEDULES}")
        need(self.max_rounds >= 0, "max_rounds must be >= 0")
        need(0 <= self.warmup_rounds <= 1_000_000, "warmup_rounds must lie in [0, 1000000]")
        need(self.step_rule in STEP_RULES, f"step_rule must be one of {STEP_RULES}")
        need(0 <= self.guard_rounds <= 1_000_000, "guard_rounds must lie in [0, 1000000] (0: no loss guard)")
        need(math.isfinite(self.guard_z) and 0 < self.guard_z <= 100, "guard_z must lie in (0, 100]")
        need(self.guard_return in GUARD_RETURNS, f"guard_return must be one of {GUARD_RETURNS}")
        need(math.isfinite(self.step_clip) and 0 <= self.step_clip <= 1000, "step_clip must lie in [0, 1000] (0: no clip)")
        need(0 <= self.pool_size <= 2**24, "pool_size must lie in [0, 2**24] (0: unbounded)")
        need(1 <= self.local_steps <= 4096, "local_steps must lie in [1, 4096]")
        need(0 <= self.group_size <= 100_000, "group_size must lie in [0, 100000]")
        need(1 <= self.batch_size <= 4096, "batch_size must lie in [1, 4096]")
        need(math.isfinite(self.scalar_scale) and self.scalar_scale > 0, "scalar_scale must be positive")
        need(self.scale_rule in SCALE_RULES, f"scale_rule must be one of {SCALE_RULES}")
        need(1 <= self.scale_target <= 100, "scale_target must lie in [1, 100] (bytes)")
        need(self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}")
        need(self.weighting in WEIGHTINGS, f"weighting must be one of {WEIGHTINGS}")
        need(
            self.weighting == "equal" or self.aggregation in WEIGHTED_AGGREGATIONS,
            f"weighting examples needs an aggregation of {WEIGHTED_AGGREGATIONS}, not {self.aggregation}",
        )
        need(0.0 <= self.trim_fraction < 0.5, "trim_fraction must lie in [0, 0.5)")
        need(0 <= self.byzantine_clients <= 50_000, "byzantine_clients must lie in [0, 50000]")
        need(1 <= self.screen_rounds <= 1000, "screen_rounds must lie in [1, 1000]")
        need(math.isfinite(self.screen_threshold) and self.screen_threshold >= 1, "screen_threshold must be >= 1")
        need(math.isfinite(self.screen_clip) and self.screen_clip >= 1, "screen_clip must be >= 1")
        need(
            self.aggregation != "screened_mean" or self.scale_rule == "adaptive",
            "screened_mean needs scale_rule adaptive: at a fixed scale honest bytes may sit at +-127 like an attacker's",
        )
        need(1 <= self.min_clients <= 100_000, "min_clients must lie in [1, 100000]")
        need(0 < self.round_deadline_s <= 86_400, "round_deadline_s must lie in (0, 86400]")
        need(self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}")
        need(self.sampling != "fedkseed_pro" or self.pool_size > 0, "fedkseed_pro sampling needs a finite pool_size")
        need(1 <= self.digest_every <= 1_000_000, "digest_every must be >= 1")
        need(len(self.trainable) <= MAX_TRAINABLE_PATTERNS, f"trainable takes at most {MAX_TRAINABLE_PATTERNS} patterns")
        need(
            all(0 < len(p) <= 256 and p.isprintable() for p in self.trainable),
            "trainable patterns must be 1-256 printable characters",
        )
        need(len(set(self.trainable)) == len(self.trainable), "trainable patterns must not repeat")
        o = self.objective
        need(o.kind in OBJECTIVES, f"objective.kind must be one of {OBJECTIVES}")
        need(o.kind != "classification" or len(o.labels) >= 2, "a classification objective needs >= 2 labels")
        need(1 <= o.max_length <= 65_536, "objective.max_length must lie in [1, 65536]")
        if not problems:
            problems += self._tolerance_problems()
        if problems:
            raise TaskSpecError("invalid task: " + "; ".join(problems))
        return self

    def _tolerance_problems(self) -> list[str]:
        """Can the aggregation rule outvote ``byzantine_clients`` faulty clients in
        the smallest round it commits (min_clients reports on the same seeds)?"""
        f, n = self.byzantine_clients, self.min_clients
        if f == 0:
            return []
        if self.group_size != 0:
            # the last group of a round holds what is left over, as few as one client
            return [f"byzantine_clients {f} needs group_size 0 (every client of a round reports on the same seeds)"]
        if self.aggregation == "mean":
            return [f"aggregation mean tolerates no faulty client, but byzantine_clients is {f}"]
        if 2 * f >= n:
            return [
                f"aggregation {self.aggregation} needs a majority of honest clients: byzantine_clients {f} "
                f"of min_clients {n}; min_clients must be at least {2 * f + 1}"
            ]
        if self.aggregation == "trimmed_mean" and int(n * self.trim_fraction) < f:
            least = math.ceil(f / n * 10_000) / 10_000  # the 4-decimal value that cuts f
            return [
                f"trim_fraction {self.trim_fraction:g} cuts {int(n * self.trim_fraction)} report(s) from each end of "
                f"a round of min_clients {n}, fewer than byzantine_clients {f}: trim_fraction must be at least "
                f"{f}/{n} (use {least:g})"
            ]
        return []

    # -- canonical form -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field that shapes the run. Fields added after the first genesis
        format are left out while they have no effect, so a genesis written
        before they existed keeps its bytes and its hash."""
        d = dataclasses.asdict(self)
        d["objective"]["labels"] = list(self.objective.labels)
        if self.trainable:
            d["trainable"] = list(self.trainable)
        else:
            del d["trainable"]
        if self.scale_rule == "fixed":
            del d["scale_rule"], d["scale_target"]
        if self.byzantine_clients == 0:
            del d["byzantine_clients"]
        if self.warmup_rounds == 0:
            del d["warmup_rounds"]
        if self.step_rule == "constant":
            del d["step_rule"], d["step_clip"]
        if self.guard_rounds == 0:
            del d["guard_rounds"], d["guard_z"]
        if self.guard_rounds == 0 or self.guard_return == "window_end":
            del d["guard_return"]
        if self.guard_rounds == 0 or not self.guard_remeasure:
            del d["guard_remeasure"]
        if self.weighting == "equal":
            del d["weighting"]
        if self.aggregation != "screened_mean":
            del d["screen_rounds"], d["screen_threshold"], d["screen_clip"]
        return d

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def genesis_hash(self) -> bytes:
        return genesis_hash_of(self.canonical_bytes())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskSpec:
        raw = dict(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TaskSpecError(f"unknown task field(s): {', '.join(unknown)}")
        obj_raw = dict(raw.pop("objective", {}) or {})
        obj_known = {f.name for f in dataclasses.fields(Objective)}
        bad = sorted(set(obj_raw) - obj_known)
        if bad:
            raise TaskSpecError(f"unknown objective field(s): {', '.join(bad)}")
        if "labels" in obj_raw:
            obj_raw["labels"] = tuple(obj_raw["labels"])
        if "trainable" in raw:
            if not isinstance(raw["trainable"], (list, tuple)) or not all(isinstance(p, str) for p in raw["trainable"]):
                raise TaskSpecError("trainable must be a list of parameter-name patterns (strings)")
            raw["trainable"] = tuple(raw["trainable"])
        missing = [
            n for n in ("task_id", "base_model", "base_digest", "manifest_digest", "unit_log2", "task_seed") if n not in raw
        ]
        if missing:
            raise TaskSpecError(f"missing task field(s): {', '.join(missing)}")
        try:
            spec = cls(objective=Objective(**obj_raw), **raw)
        except TypeError as exc:
            raise TaskSpecError(f"invalid task: {exc}") from None
        _check_types(spec)
        return spec.validate()

    @classmethod
    def from_canonical(cls, data: bytes) -> TaskSpec:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TaskSpecError(f"genesis is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise TaskSpecError("genesis must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def load_toml(cls, path: str | Path) -> TaskSpec:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise TaskSpecError(f"cannot read task file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TaskSpecError(f"task file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(raw.get("task", raw))

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({"task": self.to_dict()})


def _check_types(spec: TaskSpec) -> None:
    """TOML and JSON are loosely typed; reject e.g. a string where a number belongs."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name == "objective":
            continue
        expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
        if expected is None:
            continue
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise TaskSpecError(f"task field {f.name} must be of type {f.type}, got {type(value).__name__}")
    o = spec.objective
    if not isinstance(o.kind, str) or not isinstance(o.template, str) or not isinstance(o.max_length, int):
        raise TaskSpecError("objective fields have the wrong types")
    if not all(isinstance(x, str) for x in o.labels):
        raise TaskSpecError("objective.labels must be strings")
