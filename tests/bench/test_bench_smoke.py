"""Every benchmark at its smoke size, run as a user runs it: it must exit 0
and print its ratio line, so a benchmark that breaks fails the suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# benchmark script -> the ratio line its smoke run must print
RATIO_LINES = {
    "byzantine.py": r"^ratio screened_mean / mean attacker pull, 2 x \+127: \d+\.\d+",
    "catchup.py": r"^ratio folded catch-up, \d+ / \d+ missed rounds: \d+\.\d+x",
    "label_descriptions.py": r"^ratio chosen / default description, training-sample accuracy: \d+\.\d+",
    "gpu_check.py": r"^ratio seedfed / MeZO time per probe \(dry run\): \d+\.\d+",
    "coordinator_load.py": r"^ratio bytes per client per round / FedKSeed's: \d+\.\d+",
    "memory.py": r"^ratio client / MeZO peak RSS: \d+\.\d+x",
    "probe.py": r"^ratio probe / two forwards: \d+\.\d+",
    "quality_sst2.py": r"^ratio seedfed, \d+ clients / mezo, final dev accuracy: \d+\.\d+",
    "replay.py": r"^ratio seedfed \(eager\) vs \(a\): +\d+\.\d+x",
}


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def benchmarks() -> set[str]:
    """The scripts of bench/ (its modules without a __main__ are harness, not benchmarks)."""
    return {p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}


def test_every_benchmark_has_a_smoke_run() -> None:
    assert benchmarks() == set(RATIO_LINES), "every benchmark in bench/ takes --smoke and has its ratio line here"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RATIO_LINES))
def test_smoke_size(script: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        result = subprocess.run(
            [sys.executable, str(BENCH / script), "--smoke"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} --smoke ran past {exc.timeout:g} s:\n{_text(exc.stdout)[-4000:]}{_text(exc.stderr)[-4000:]}")
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    assert re.search(RATIO_LINES[script], result.stdout, re.MULTILINE), output
