"""Fixtures for the client tests: tiny models and data files, built once per session."""

from __future__ import annotations

import pytest
import tinymodels


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return tinymodels.make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    return tinymodels.make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def other_bert_dir(tmp_path_factory):
    """Same architecture, different weights: a wrong base model."""
    return tinymodels.make_bert(tmp_path_factory.mktemp("bert_other"), seed=1)


@pytest.fixture(scope="session")
def engine():
    """The engine modules; tests that need them skip until they exist."""
    return pytest.importorskip("seedfed.client.engine.state")


def make_spec(model_dir, task_id="t1", kind="classification", **fields):
    from seedfed.client.genesis import genesis_for_model
    from seedfed.shared.taskspec import Objective

    obj = Objective(
        kind=kind, labels=("negative", "positive") if kind == "classification" else (), template="it was {text}", max_length=24
    )
    defaults = dict(task_seed=7, pool_size=64, batch_size=4, digest_every=1, local_steps=2, eps=1e-2, lr=1e-3)
    defaults.update(fields)
    return genesis_for_model(str(model_dir), task_id, obj, **defaults)


@pytest.fixture(scope="session")
def bert_spec(engine, bert_dir):
    return make_spec(bert_dir)
