"""The quality benchmark's rows read across seeds: one seed's row moves by more
than the targets' margins, so a rule is judged by its mean over seeds.

Rows are matched by name: a row run at a non-default seed ends in ", seed N"
(the default seed's rows carry none), and a learning rate is named ", lr X".
A loss-guard option changes a run only once the guard rolls back, so where a
row without the option shows it could not act, that row stands in for the run
with it, marked as such, and the option's seeds need not all be rerun.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SEED_SUFFIX = re.compile(r", seed (\d+)$")
LR_PART = re.compile(r", lr ([0-9.e+-]+)")
ROLLBACKS = re.compile(r"rollbacks at rounds: (none|\d+(?:, \d+)*)")
# the loss guard's options as a row's name shows them (quality_sst2.rule_label), each with whether
# it acts in a run given that run's rollbacks and its last round
BACK_TO_START = ", back to window start"  # where a rollback returns: acts at every rollback
REMEASURED = ", remeasured"  # the reference after a rollback: acts from the window after one
_GUARD_OPTIONS = (
    (REMEASURED, lambda rollbacks, last: bool(set(rollbacks) - {last})),
    (BACK_TO_START, lambda rollbacks, last: bool(rollbacks)),
)


def seed_suffix(seed: int, default_seed: int) -> str:
    """What a row run at ``seed`` appends to its name (SEED_SUFFIX reads it back)."""
    return "" if seed == default_seed else f", seed {seed}"


def lr_part(lr: float) -> str:
    """How a row names its lr (LR_PART reads it back)."""
    return f", lr {lr:g}"


def rollbacks_note(rounds: Sequence[int]) -> str:
    """How a row's notes list the loss guard's rollbacks (ROLLBACKS reads it back)."""
    return "rollbacks at rounds: " + (", ".join(map(str, rounds)) or "none")


def rollbacks_of(notes: str) -> list[int] | None:
    """The rounds a row's loss guard rolled back at; None for a row without a guard."""
    m = ROLLBACKS.search(notes)
    if m is None:
        return None
    return [] if m.group(1) == "none" else [int(x) for x in m.group(1).split(", ")]


@dataclass
class Configuration:
    """One rule at one lr, run at several seeds."""

    name: str  # the row name without its seed
    finals: dict[int, float] = field(default_factory=dict)  # seed -> final dev accuracy
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    stood_in: set[int] = field(default_factory=set)  # seeds whose row is a run without a guard option that could not act

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals.values())

    def mean_curve(self) -> list[tuple[int, float, float, float]]:
        """(step, mean, min, max) at the steps every seed evaluated."""
        curves = [dict(c) for c in self.curves.values()]
        steps = set.intersection(*(set(c) for c in curves))
        out = []
        for step in sorted(steps):
            values = [c[step] for c in curves]
            out.append((step, statistics.fmean(values), min(values), max(values)))
        return out


def split_seed(name: str, default_seed: int) -> tuple[str, int]:
    m = SEED_SUFFIX.search(name)
    return (name[: m.start()], int(m.group(1))) if m else (name, default_seed)


def configurations(rows: Iterable, default_seed: int) -> list[Configuration]:
    """Every configuration run at two or more seeds: a rule's lrs together and
    ascending, the rules in the order of their first rows."""
    runs: dict[str, dict[int, object]] = {}
    for r in rows:
        if r.name.startswith("seedfed, "):
            name, seed = split_seed(r.name, default_seed)
            runs.setdefault(name, {})[seed] = r
    by_name: dict[str, Configuration] = {}
    for name in _configuration_names(runs):
        c = by_name[name] = Configuration(name)
        for seed in sorted(set().union(*(runs.get(n, {}) for n in _without_options(name)))):
            r = _run_of(runs, name, seed)
            if r is not None:
                c.finals[seed] = r.final_accuracy
                c.curves[seed] = list(r.curve)
                if seed not in runs.get(name, {}):
                    c.stood_in.add(seed)
    found = [c for c in by_name.values() if len(c.finals) >= 2]
    keys = {c.name: _rule_and_lr(c.name) for c in found}
    first: dict[str, int] = {}
    for rule, _ in keys.values():
        first.setdefault(rule, len(first))
    return sorted(found, key=lambda c: (first[keys[c.name][0]], keys[c.name][1] or 0.0))


def _configuration_names(runs: dict[str, dict[int, object]]) -> list[str]:
    """The rows' configurations, and each guard option's rule at the lrs only a plainer rule ran at."""
    names = dict.fromkeys(runs)
    rules_and_lrs = [_rule_and_lr(name) for name in runs]
    for rule, _ in rules_and_lrs:
        plainer = _without_options(rule)
        names.update(dict.fromkeys(rule + lr_part(lr) for r, lr in rules_and_lrs if r in plainer and lr is not None))
    return list(names)


def _without_options(name: str) -> set[str]:
    """The name and every name it gives with some of its guard options left out."""
    out = {name}
    for part, _ in _GUARD_OPTIONS:
        if part in name:
            out |= _without_options(name.replace(part, "", 1))
    return out


def _run_of(runs: dict[str, dict[int, object]], name: str, seed: int):
    """The row that is the run of configuration ``name`` at ``seed``: its own, or that of
    the configuration without one of its guard options, where that row shows the option
    could not have acted. None when neither is there."""
    own = runs.get(name, {}).get(seed)
    if own is not None:
        return own
    for part, acts in _GUARD_OPTIONS:
        if part not in name:
            continue
        r = _run_of(runs, name.replace(part, "", 1), seed)
        rollbacks = None if r is None else rollbacks_of(r.notes)
        if rollbacks is not None and not acts(rollbacks, r.curve[-1][0]):
            return r
    return None


def _rule_and_lr(name: str) -> tuple[str, float | None]:
    """The name with its lr left out, and the lr (None when the name has none)."""
    m = LR_PART.search(name)
    return (name[: m.start()] + name[m.end() :], float(m.group(1))) if m else (name, None)


@dataclass
class Sweep:
    """One rule over several lrs, compared over the seeds every lr was run at."""

    rule: str  # the configuration name with its lr left out
    points: list[tuple[float, Configuration]]  # (lr, configuration), lr ascending
    seeds: tuple[int, ...]

    def mean_at(self, config: Configuration) -> float:
        return statistics.fmean(config.finals[s] for s in self.seeds)

    def span_of_means(self) -> float:
        means = [self.mean_at(c) for _, c in self.points]
        return max(means) - min(means)

    def span_at(self, seed: int) -> float:
        finals = [c.finals[seed] for _, c in self.points]
        return max(finals) - min(finals)


def sweeps(configs: Sequence[Configuration]) -> list[Sweep]:
    """Rules run at two or more lrs; each lr is compared over the seeds all of them share."""
    families: dict[str, list[tuple[float, Configuration]]] = {}
    for c in configs:
        rule, lr = _rule_and_lr(c.name)
        if lr is not None:
            families.setdefault(rule, []).append((lr, c))
    out = []
    for rule, points in families.items():
        seeds = set.intersection(*(set(c.finals) for _, c in points))
        if len(points) < 2 or len(seeds) < 2:
            continue
        out.append(Sweep(rule, sorted(points, key=lambda p: p[0]), tuple(sorted(seeds))))
    return out


def markdown(configs: Sequence[Configuration]) -> str:
    """Two tables: each configuration's finals over seeds, and each lr sweep's span of the means."""
    if not configs:
        return ""
    lines = [
        "## Across seeds",
        "",
        "| configuration | seeds | final dev accuracy at each seed | mean | range |",
        "|---|---|---|---:|---:|",
    ]
    for c in configs:
        seeds = sorted(c.finals)
        finals = ", ".join(f"{100 * c.finals[s]:.2f}%" + ("*" * (s in c.stood_in)) for s in seeds)
        spread = 100 * (max(c.finals.values()) - min(c.finals.values()))
        lines.append(f"| {c.name} | {', '.join(map(str, seeds))} | {finals} | {100 * c.mean:.2f}% | {spread:.2f} |")
    if any(c.stood_in for c in configs):
        lines += [
            "",
            "\\* the run of the same configuration without one of its loss-guard options (where a rollback"
            " returns, remeasure), which that run shows could not have acted: it never rolled back, or, for"
            " remeasure, only at the last round. It was not rerun.",
        ]
    found = sweeps(configs)
    if found:
        lines += [
            "",
            "| rule (lr sweep) | seeds | mean final at each lr | span of the means | span at each seed |",
            "|---|---|---|---:|---|",
        ]
        for s in found:
            means = ", ".join(f"{lr:g}: {100 * s.mean_at(c):.2f}%" for lr, c in s.points)
            per_seed = ", ".join(f"{seed}: {100 * s.span_at(seed):.2f}" for seed in s.seeds)
            lines.append(f"| {s.rule} | {', '.join(map(str, s.seeds))} | {means} | {100 * s.span_of_means():.2f} | {per_seed} |")
    return "\n".join(lines) + "\n"


def plot(configs: Sequence[Configuration], path) -> bool:
    """Each configuration's mean curve over seeds, shaded from its lowest seed to its highest."""
    if not configs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, c in enumerate(configs):
        curve = c.mean_curve()
        colour = plt.cm.tab10(i % 10)
        steps = [s for s, *_ in curve]
        ax.plot(
            steps, [100 * m for _, m, _, _ in curve], marker="o", ms=3, color=colour, label=f"{c.name} ({len(c.finals)} seeds)"
        )
        ax.fill_between(steps, [100 * lo for *_, lo, _ in curve], [100 * hi for *_, hi in curve], color=colour, alpha=0.12)
    ax.set_xlabel("step (round)")
    ax.set_ylabel("SST-2 dev accuracy (%), mean over seeds")
    ax.set_title("Mean over seeds (shaded: lowest to highest seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True
