"""The quality benchmark's reading across seeds: configurations matched by name,
lr sweeps compared only over the seeds every lr was run at."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import seed_summary

RULE = "seedfed, 8 clients, step spread (clip 1), adaptive scale"


@dataclass
class FakeRow:
    name: str
    final_accuracy: float
    curve: list


def row(lr: str, seed: int | None, final: float) -> FakeRow:
    name = RULE + seed_summary.lr_part(float(lr)) + seed_summary.seed_suffix(seed or 1, default_seed=1)
    return FakeRow(name, final, [(0, 0.5), (100, final - 0.01), (200, final)])


def test_the_default_seed_is_the_row_without_a_suffix() -> None:
    assert seed_summary.split_seed(f"{RULE}, lr 0.001, seed 3", 1) == (f"{RULE}, lr 0.001", 3)
    assert seed_summary.split_seed(f"{RULE}, lr 0.001", 1) == (f"{RULE}, lr 0.001", 1)


@pytest.mark.parametrize("lr", [5e-4, 1e-3, 2.5e-05])
@pytest.mark.parametrize("seed", [1, 2, 13])
def test_names_the_bench_writes_read_back(lr: float, seed: int) -> None:
    name = RULE + seed_summary.lr_part(lr) + seed_summary.seed_suffix(seed, default_seed=1)
    without_seed, read_seed = seed_summary.split_seed(name, 1)
    assert read_seed == seed
    assert seed_summary._rule_and_lr(without_seed) == (RULE, lr)


def test_configurations_need_two_seeds_and_ignore_other_methods() -> None:
    rows = [
        row("0.001", None, 0.77),
        row("0.001", 2, 0.71),
        row("0.002", None, 0.75),  # one seed only
        FakeRow("mezo (centralised, Gaussian, lr 0.0001), seed 2", 0.6, [(0, 0.5)]),
    ]
    configs = seed_summary.configurations(rows, default_seed=1)
    assert [c.name for c in configs] == [f"{RULE}, lr 0.001"]
    assert configs[0].finals == {1: 0.77, 2: 0.71}
    assert configs[0].mean == pytest.approx(0.74)
    assert configs[0].mean_curve()[-1] == pytest.approx((200, 0.74, 0.71, 0.77))


def test_configurations_list_a_rules_lrs_together_and_ascending() -> None:
    other = "seedfed, 8 clients, step constant, fixed scale"
    rows = [row("0.002", None, 0.75), row("0.002", 2, 0.73)]
    rows += [FakeRow(f"{other}, lr 0.0001{s}", 0.7, [(0, 0.5)]) for s in ("", ", seed 2")]
    rows += [row("0.001", None, 0.77), row("0.001", 2, 0.71)]
    names = [c.name for c in seed_summary.configurations(rows, default_seed=1)]
    assert names == [f"{RULE}, lr 0.001", f"{RULE}, lr 0.002", f"{other}, lr 0.0001"]


def test_a_sweep_compares_lrs_over_their_shared_seeds_only() -> None:
    rows = [
        row("0.001", None, 0.77),
        row("0.001", 2, 0.71),
        row("0.001", 3, 0.74),
        row("0.002", None, 0.75),
        row("0.002", 2, 0.73),  # seed 3 missing at this lr: the sweep uses seeds 1 and 2
    ]
    (sweep,) = seed_summary.sweeps(seed_summary.configurations(rows, default_seed=1))
    assert sweep.rule == RULE
    assert sweep.seeds == (1, 2)
    assert [lr for lr, _ in sweep.points] == [0.001, 0.002]
    assert sweep.span_of_means() == pytest.approx(0.74 - 0.74)
    assert sweep.span_at(1) == pytest.approx(0.02)
    assert sweep.span_at(2) == pytest.approx(0.02)
    text = seed_summary.markdown(seed_summary.configurations(rows, default_seed=1))
    assert "| 0.001: 74.00%, 0.002: 74.00% | 0.00 | 1: 2.00, 2: 2.00 |" in text
    assert "| 1, 2, 3 | 77.00%, 71.00%, 74.00% | 74.00% | 6.00 |" in text


def test_one_seed_everywhere_writes_nothing(tmp_path) -> None:
    rows = [row("0.001", None, 0.77), row("0.002", None, 0.75)]
    assert seed_summary.markdown(seed_summary.configurations(rows, default_seed=1)) == ""
    assert not seed_summary.plot(seed_summary.configurations(rows, 1), tmp_path / "seeds.png")


def test_the_plot_is_written(tmp_path) -> None:
    rows = [row("0.001", None, 0.77), row("0.001", 2, 0.71)]
    assert seed_summary.plot(seed_summary.configurations(rows, 1), tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").stat().st_size > 1000
