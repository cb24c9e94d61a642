"""Fixtures for the engine tests: tiny transformers built from configs (no model hub)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bert, tiny_gpt2

from seedfed.client.engine import philox


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture(scope="session")
def compiled_ok():
    """Compile the kernels once per session; skip compiled-path tests where torch.compile cannot run."""
    try:
        flat = torch.zeros(1000, dtype=torch.int32)
        philox.add_signs_(flat, 1, 2, 3, compiled=True)
    except Exception as exc:  # pragma: no cover - depends on a C++ compiler being present
        pytest.skip(f"torch.compile unavailable: {exc}")
    if philox._compile_broken:
        pytest.skip("torch.compile unavailable on this machine")
    return True
