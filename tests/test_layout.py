"""The import rules of the layout (docs/architecture.md), each held here.

- ``seedfed.shared`` imports with torch and transformers unimportable, and
  loads nothing of ``seedfed.server`` or ``seedfed.client``;
- ``seedfed.server`` imports without torch and loads nothing of ``seedfed.client``;
- ``seedfed.client`` names ``seedfed.server`` in one module only, ``seedfed.client.history``;
- the edge daemon (``seedfed client``) reaches ``seedfed.server`` by no import at all.

What a module loads is seen in a fresh interpreter, so nothing the test
process imported before counts; what a module could import later (inside a
function) is read from its source.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

TORCH_STACK = ("torch", "transformers", "safetensors")
STORAGE_DOOR = "seedfed.client.history"  # the one client module that may reach coordinator storage
DAEMON_ROOTS = ("seedfed.client.daemon", "seedfed.client.cli")  # `seedfed client` and what it runs
NOT_IMPORTABLE = {"seedfed.server.migrations.env"}  # alembic runs it inside a migration context

# Runs in a fresh interpreter: import each named module in turn and report what each one
# loaded that was not loaded before (or the error it raised).
IMPORT_EACH = """
import importlib, importlib.abc, json, sys

blocked = tuple(json.loads(sys.argv[1]))


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked in this interpreter", name=name)
        return None


sys.meta_path.insert(0, Blocked())
report = {}
for name in json.loads(sys.argv[2]):
    before = set(sys.modules)
    try:
        importlib.import_module(name)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    report[name] = {"error": error, "loaded": sorted(set(sys.modules) - before)}
print(json.dumps(report))
"""


def modules_of(package: str) -> list[str]:
    """The package and every module below it, found on disk (nothing is imported)."""
    out = [package]

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            out.append(prefix + info.name)
            if info.ispkg:
                walk(path / info.name, f"{prefix}{info.name}.")

    walk(Path(importlib.util.find_spec(package).submodule_search_locations[0]), f"{package}.")
    return [m for m in out if m not in NOT_IMPORTABLE]


def import_each(modules: list[str], blocked: tuple[str, ...] = ()) -> dict[str, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, json.dumps(blocked), json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_shared_imports_without_torch_and_without_either_side() -> None:
    modules = modules_of("seedfed.shared")
    assert {"seedfed.shared.wire", "seedfed.shared.round_math", "seedfed.shared.philox"} <= set(modules)
    report = import_each(modules, blocked=TORCH_STACK)
    errors = {m: r["error"] for m, r in report.items() if r["error"]}
    assert not errors, errors
    crossed = {
        m: n for m, r in report.items() if (n := [n for n in r["loaded"] if _under(n, ("seedfed.server", "seedfed.client"))])
    }
    assert not crossed, crossed


def test_server_imports_without_torch_and_without_the_client() -> None:
    modules = modules_of("seedfed.server")
    assert {"seedfed.server.app", "seedfed.server.rounds", "seedfed.server.migrations.versions"} <= set(modules)
    report = import_each(modules, blocked=TORCH_STACK)
    errors = {m: r["error"] for m, r in report.items() if r["error"]}
    assert not errors, errors
    crossed = {m: n for m, r in report.items() if (n := [n for n in r["loaded"] if _under(n, ("seedfed.client",))])}
    assert not crossed, crossed


# -- what a module's source imports, wherever in the file -------------------------------


def imported_names(module: str) -> set[str]:
    """Every module an import statement of ``module`` names (at any depth: functions too),
    and every literal string handed to importlib.import_module or __import__."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from seedfed import server`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def test_client_reaches_the_server_only_through_its_storage_door() -> None:
    modules = modules_of("seedfed.client")
    assert STORAGE_DOOR in modules and "seedfed.client.engine.state" in modules
    crossing = {m: n for m in modules if (n := sorted(n for n in imported_names(m) if _under(n, ("seedfed.server",))))}
    assert crossing.pop(STORAGE_DOOR, None), "the storage door no longer reaches the coordinator's storage"
    assert not crossing, crossing


def test_the_daemon_never_imports_the_server() -> None:
    """The modules `seedfed client` can ever import, followed through every import in their
    source, include nothing of seedfed.server, not even the storage door."""
    seen: set[str] = set()
    todo = list(DAEMON_ROOTS)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in imported_names(module):
            if _under(name, ("seedfed",)) and _is_module(name) and importlib.util.find_spec(name).origin:
                todo.append(name)
    assert "seedfed.client.worker" in seen and "seedfed.client.engine.state" in seen  # the walk follows imports
    reached = sorted(m for m in seen if _under(m, ("seedfed.server", STORAGE_DOOR)))
    assert not reached, reached
    # and what actually loads, in a fresh interpreter
    report = import_each(list(DAEMON_ROOTS))
    loaded = {n for r in report.values() for n in r["loaded"]}
    assert not [r["error"] for r in report.values() if r["error"]]
    assert "seedfed.client.daemon" in loaded and not [n for n in loaded if _under(n, ("seedfed.server",))]


def test_the_blocker_blocks() -> None:
    """The import checks above would see a module that needs torch."""
    report = import_each(["seedfed.client.engine.state"], blocked=TORCH_STACK)
    assert "torch" in (report["seedfed.client.engine.state"]["error"] or "")
