"""Fixtures of the security tests."""

from __future__ import annotations

import pytest
from sec_helpers import make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory):  # noqa: ANN001, ANN201
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def db_url(tmp_path) -> str:  # noqa: ANN001
    return f"sqlite:///{tmp_path / 'coordinator.db'}"
