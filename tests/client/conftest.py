"""Fixtures for the client tests: tiny models built once per session."""

from __future__ import annotations

import pytest
from helpers import model_spec, save_test_model


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    return save_test_model(tmp_path_factory.mktemp("bert"), "bert")


@pytest.fixture(scope="session")
def other_bert_dir(tmp_path_factory):
    """Same architecture, different weights: a wrong base model."""
    return save_test_model(tmp_path_factory.mktemp("bert_other"), "bert", seed=1)


@pytest.fixture(scope="session")
def engine():
    """The engine's fixed-point state module (imported, so that a broken engine fails these tests)."""
    from seedfed.client.engine import state

    return state


@pytest.fixture(scope="session")
def bert_spec(engine, bert_dir):
    return model_spec(bert_dir)
