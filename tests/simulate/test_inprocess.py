"""The in-process federation: per-client probes, and all clients in one forward pass per sign."""

from __future__ import annotations

import pytest
from helpers import model_spec, save_test_model, write_classification

from seedfed.client.data import read_classification
from seedfed.client.model import load_base
from seedfed.client.objectives import build_objective
from seedfed.client.replica import Replica
from seedfed.client.simulate.inprocess import InProcessFederation
from seedfed.shared.quantize import decode_bytes


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("inprocess")
    model_dir = save_test_model(root / "bert", "bert")
    spec = model_spec(model_dir, local_steps=1, group_size=0, batch_size=3, scalar_scale=0.5, min_clients=4)
    examples = read_classification(write_classification(root / "d.tsv", n=48), spec.objective.labels)
    return spec, model_dir, [examples[i::4] for i in range(4)]


def federation(setting, together: bool) -> InProcessFederation:
    from seedfed.client.engine.state import ComputeWeights

    spec, model_dir, shares = setting
    base = load_base(str(model_dir), spec.objective.kind)
    replica = Replica.from_base(spec, base.module)
    weights = ComputeWeights.bind(base.module, replica.state)
    objective = build_objective(spec.objective, base.module, base.tokenizer, "cpu")
    return InProcessFederation(replica, weights, objective, shares, sampler_seed=5, together=together)


def test_one_pass_per_sign_gives_each_client_its_own_scalar(setting) -> None:
    each, together = federation(setting, False), federation(setting, True)
    for round_no in (1, 2, 3):
        plan = each.plan(round_no)
        assert together.plan(round_no).group_seeds == plan.group_seeds
        a, b = each._probe_each(plan), together._probe_together(plan)
        bytes_a = [decode_bytes(s)[0] for s, _ in a]
        bytes_b = [decode_bytes(s)[0] for s, _ in b]
        assert all(0 < abs(x) < 127 for x in bytes_a) and all(abs(x - y) <= 1 for x, y in zip(bytes_a, bytes_b)), (
            bytes_a,
            bytes_b,
        )
        assert [loss for _, loss in b] == pytest.approx([loss for _, loss in a], rel=1e-5)
    assert together.replica.digest() == each.replica.digest()  # probing never moves the weights


def test_rounds_commit_the_same_way_either_way(setting) -> None:
    each, together = federation(setting, False), federation(setting, True)
    reports = [(each.run_round(), together.run_round()) for _ in range(3)]
    assert all(r.scalars == s.scalars == 4 and r.bytes_up_per_client == s.bytes_up_per_client for r, s in reports)
    assert [r.seeds for r in each.history] == [r.seeds for r in together.history]
    assert each.replica.round == together.replica.round == 3


@pytest.mark.parametrize(("guard_return", "remeasure"), [("window_end", False), ("window_start", False), ("window_start", True)])
def test_a_loss_guard_rollback_gives_back_the_best_windows_weights(setting, guard_return, remeasure) -> None:
    import dataclasses

    spec, model_dir, shares = setting
    # guard_z 0.01: any rise rolls back; under remeasure the best window is the one after the last rollback
    guard = {"guard_rounds": 2, "guard_z": 0.01, "guard_return": guard_return, "guard_remeasure": remeasure}
    guarded = dataclasses.replace(spec, **guard).validate()
    fed = federation((guarded, model_dir, shares), together=True)
    digests = {0: fed.replica.digest()}
    back = 2 if guard_return == "window_start" else 0  # a window of 2 rounds ending at e started at e - 2
    best_end, returned_to = None, {}
    for _ in range(16):
        best = fed.guard.best
        report = fed.run_round()
        digests[report.round] = fed.replica.digest()
        assert report.rolled_back == (report.round in fed.guard.rollbacks)
        if report.rolled_back:
            returned_to[report.round] = (best_end - back, best_end - 2 + back)  # (this end of it, the other)
        elif fed.guard.best is not best:
            best_end = report.round
    assert fed.guard.rollbacks, "no window rose in 16 rounds"
    for r, (point, other) in returned_to.items():
        assert digests[r] == digests[point] != digests[other], f"round {r} did not return to the best window's {guard_return}"
        assert digests[r] != digests[r - 1]
    assert fed.plan(17).lr == guarded.lr_at(17) * 2.0 ** -len(fed.guard.rollbacks)


def test_under_weighting_by_examples_each_client_claims_its_share(setting) -> None:
    import dataclasses

    spec, model_dir, shares = setting
    weighted = federation((dataclasses.replace(spec, weighting="examples").validate(), model_dir, shares), together=True)
    equal = federation(setting, together=True)
    assert weighted.sizes == [len(s) for s in shares] == [12] * 4
    # the claim costs its field: tag 7 and the varint 12, two bytes a report
    assert weighted.run_round().bytes_up_per_client == equal.run_round().bytes_up_per_client + 2
