"""core/ never imports textual (the TUI is one front end among others; the worker must run without it)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_core_module_imports_textual():
    code = (
        "import importlib, pkgutil, sys, core\n"
        "names = [m.name for m in pkgutil.walk_packages(core.__path__, 'core.') if not m.name.endswith('__main__')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names)); print(' '.join(m for m in sys.modules if m == 'textual' or m.startswith('textual.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, leaked = (out.stdout.splitlines() + [""])[:2]
    assert int(count) > 20  # really walked the package
    assert leaked == ""


# core/runs/ modules that operate runs (start a worker, run the trainer) rather than define the run folder's contract
RUN_OPERATORS = {"core.runs.api", "core.runs.worker"}


def _core_imports(module: str) -> set[str]:
    """The core.* modules `module` imports anywhere in its file (lazy imports included), as imported."""
    import ast

    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = ROOT / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("core"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").is_file())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("core"))
    return found


def test_the_run_contract_imports_nothing_from_training():
    """The run folder's contract (events, status, their reducer, words, layout) sits below the trainer: no module of
    it reaches core.training, directly or through another, lazily or not."""
    contract = {f"core.runs.{p.stem}" for p in (ROOT / "core" / "runs").glob("*.py")} - RUN_OPERATORS
    assert "core.runs.run_state" in contract and "core.runs.run_events" in contract
    reached, todo = {}, [(m, m) for m in sorted(contract)]
    while todo:
        module, via = todo.pop()
        for imported in _core_imports(module):
            if imported not in reached:
                reached[imported] = via
                todo.append((imported, via))
    assert sorted((m, via) for m, via in reached.items() if m.startswith("core.training")) == []
