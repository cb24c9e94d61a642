"""The coordinator image has no torch: importing every server module must not pull it in."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import seedfed.server
for m in pkgutil.walk_packages(seedfed.server.__path__, "seedfed.server."):
    if ".migrations" in m.name:
        continue
    importlib.import_module(m.name)
import seedfed.shared.cli
bad = sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "transformers", "safetensors", "numpy"))
print(bad)
sys.exit(1 if any(n.split(".")[0] == "torch" for n in bad) else 0)
"""


def test_server_modules_never_import_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch" not in proc.stdout
