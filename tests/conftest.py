"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device; none is visible")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)


LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a live PostgreSQL server: SEEDFED_TEST_POSTGRES_URL (.ci/run sets it),
    else the local server; skipped, with the reason, only when none answers."""
    url = os.environ.get("SEEDFED_TEST_POSTGRES_URL") or LOCAL_POSTGRES_URL
    try:
        import psycopg

        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # no driver, no server, bad credentials
        pytest.skip(
            f"no PostgreSQL server answers at {url}: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    return url
