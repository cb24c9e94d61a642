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
    notes: str = ""


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


def guarded(options: str, seed: int, final: float, rollbacks: list[int], lr: str = "0.001") -> FakeRow:
    name = f"seedfed, 8 clients, loss guard (100 rounds, z 2{options}), lr {lr}" + seed_summary.seed_suffix(seed, 1)
    return FakeRow(name, final, [(0, 0.5), (2000, final)], "K=4096, " + seed_summary.rollbacks_note(rollbacks))


def test_a_run_the_guard_option_could_not_act_on_stands_in_for_it() -> None:
    start, both = seed_summary.BACK_TO_START, seed_summary.BACK_TO_START + seed_summary.REMEASURED
    rows = [
        guarded("", 1, 0.70, []),  # never rolled back: the same run under every option
        guarded("", 2, 0.71, [700]),
        guarded("", 3, 0.72, [2000]),  # where it returns matters even at the last round
        guarded(start, 2, 0.73, [700]),
        guarded(start, 3, 0.74, [2000]),  # remeasure acts only after a rollback's next window
        guarded(both, 2, 0.75, [700, 900]),
    ]
    by_name = {c.name.split("z 2")[1]: c for c in seed_summary.configurations(rows, default_seed=1)}
    plain, to_start, remeasured = by_name["), lr 0.001"], by_name[f"{start}), lr 0.001"], by_name[f"{both}), lr 0.001"]
    assert plain.finals == {1: 0.70, 2: 0.71, 3: 0.72} and not plain.stood_in
    assert to_start.finals == {1: 0.70, 2: 0.73, 3: 0.74} and to_start.stood_in == {1}
    assert remeasured.finals == {1: 0.70, 2: 0.75, 3: 0.74} and remeasured.stood_in == {1, 3}
    text = seed_summary.markdown([remeasured])
    assert "| 70.00%*, 75.00%, 74.00%* |" in text and "was not rerun" in text
    # a rule with an option also appears at an lr only the plainer rule was run at
    at_2x = [guarded("", seed, 0.69, [], lr="0.002") for seed in (1, 2)]
    (sweep,) = [s for s in seed_summary.sweeps(seed_summary.configurations(rows + at_2x, 1)) if both in s.rule]
    assert [lr for lr, _ in sweep.points] == [0.001, 0.002] and sweep.seeds == (1, 2)
    assert sweep.points[1][1].finals == {1: 0.69, 2: 0.69} and sweep.points[1][1].stood_in == {1, 2}
    # a rollback before the last round is one remeasure acts after: no stand-in
    rows[4] = guarded(start, 3, 0.74, [1500])
    (remeasured,) = [c for c in seed_summary.configurations(rows, default_seed=1) if c.name.startswith(remeasured.name)]
    assert remeasured.finals == {1: 0.70, 2: 0.75} and remeasured.stood_in == {1}


@pytest.mark.parametrize("rounds", [[], [300], [300, 1400, 2000]])
def test_rollbacks_read_back_from_the_notes(rounds: list[int]) -> None:
    notes = f"batch 2, {seed_summary.rollbacks_note(rounds)}, final lr x0.5 of the schedule's, digest ab"
    assert seed_summary.rollbacks_of(notes) == rounds
    assert seed_summary.rollbacks_of("batch 2, digest ab") is None


def test_one_seed_everywhere_writes_nothing(tmp_path) -> None:
    rows = [row("0.001", None, 0.77), row("0.002", None, 0.75)]
    assert seed_summary.markdown(seed_summary.configurations(rows, default_seed=1)) == ""
    assert not seed_summary.plot(seed_summary.configurations(rows, 1), tmp_path / "seeds.png")


def test_the_plot_is_written(tmp_path) -> None:
    rows = [row("0.001", None, 0.77), row("0.001", 2, 0.71)]
    assert seed_summary.plot(seed_summary.configurations(rows, 1), tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").stat().st_size > 1000
