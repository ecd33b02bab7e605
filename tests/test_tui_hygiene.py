"""The UI process never imports torch, diffusers or transformers: import every tui module in a fresh interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import tui

ROOT = Path(__file__).resolve().parent.parent


def tui_modules() -> list[str]:
    names = ["tui"]
    for info in pkgutil.walk_packages(tui.__path__, "tui."):
        names.append(info.name)
    return sorted(names)


def test_every_tui_module_is_free_of_heavy_imports():
    modules = tui_modules()
    assert {"tui.app", "tui.state", "tui.screens.monitor", "tui.widgets.loss_plot"} <= set(modules)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# --- what tui/ imports lazily, and where its blocking calls run (checks over the code) -------------------------------

HEAVY = ("torch", "diffusers", "transformers", "open_clip", "accelerate")
NOT_YET = {"tui/screens/captions.py", "tui/screens/preprocess.py", "tui/screens/caption_tags.py"}  # their owner's


def tui_sources() -> dict[str, "ast.Module"]:
    import ast

    return {str(p.relative_to(ROOT)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted((ROOT / "tui").rglob("*.py"))}


def imported_names(tree) -> set[str]:
    """Every module an `import` anywhere in the file names, function bodies included (the lazy ones)."""
    import ast

    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_what_tui_imports_lazily_is_free_of_heavy_imports_too():
    """Not only the tui modules at import time: every module tui/ imports anywhere, a function's lazy import
    included, must import without torch, diffusers or transformers."""
    names = set().union(*(imported_names(tree) for tree in tui_sources().values()))
    assert not {n for n in names if n.split(".")[0] in HEAVY}, "tui/ imports a heavy package itself"
    ours = sorted(n for n in names if n.split(".")[0] in ("core", "tui"))
    assert "core.models.parts" in ours and "core.training.preflight" in ours  # lazy imports are in the list
    code = (
        "import importlib, json, sys\n"
        f"for name in {ours!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        pass  # `from core.x import name` of a function: its module is in the list too\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


BLOCKING = {"list_images", "folder_report", "inspect_model", "inspect_checkpoint", "find_checkpoints",
            "read_queue", "recent_rate", "start_summary", "sample_prompts", "read_sizes", "find_targets",
            "copy_embedding", "final_files", "prepare_demo_state"}  # besides everything in core.runs.api
UI_THREAD = ("on_", "action_", "watch_", "compose", "_on_")  # handlers run on the UI thread
RUN_IN_WORKERS = {"check_files"}  # WizardScreen.action_next runs it in a worker


def _is_worker(func) -> bool:
    import ast

    for deco in func.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Name) and target.id == "work":
            return True
    return False


def _called(func) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "runapi":
                out.add("runapi." + f.attr)
            elif isinstance(f, ast.Attribute):
                out.add(f.attr)
            elif isinstance(f, ast.Name):
                out.add(f.id)
    return out


def test_ui_thread_handlers_never_call_the_run_api_or_list_images():
    """docs/architecture.md: nothing blocks the UI thread. A handler (on_*, action_*, watch_*, @on, check, proceed)
    may reach `core.runs.api`, an image listing or another file scan only through a worker: functions that call
    them (directly or through each other) are followed, and only @work functions and check_files stop the chain."""
    import ast

    funcs = {}
    for path, tree in tui_sources().items():
        if path in NOT_YET:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.setdefault(node.name, []).append((path, node))
    blocking = set(BLOCKING)
    changed = True
    while changed:  # a function calling a blocking one blocks too, unless it is a worker
        changed = False
        for name, defs in funcs.items():
            if name in blocking or name in RUN_IN_WORKERS:
                continue
            for _, node in defs:
                calls = _called(node)
                if not _is_worker(node) and (calls & blocking or any(c.startswith("runapi.") for c in calls)):
                    blocking.add(name)
                    changed = True
    offenders = []
    for name, defs in funcs.items():
        for path, node in defs:
            handler = (name.startswith(UI_THREAD) or name in ("check", "proceed")
                       or any(isinstance(d, ast.Call) and getattr(d.func, "id", "") == "on" for d in node.decorator_list))
            if handler and name in blocking and not _is_worker(node):
                offenders.append(f"{path}: {name}")
    assert offenders == []


def test_user_facing_text_names_no_python_class():
    """Messages never show an exception's class name ("ValueError: ..."): `tui.errors.error_text` words them."""
    from tui.errors import error_text

    assert error_text(ValueError("image is 48x40")) == "Image is 48x40"
    assert error_text(KeyError("width")) == "Missing 'width'"
    assert error_text(RuntimeError("")).startswith("Something went wrong")
    assert error_text(FileNotFoundError(2, "No such file or directory", "/x/y.png")) == "File not found: /x/y.png"
    offenders = []
    for path, tree in tui_sources().items():
        for node in ast_walk_formatted(tree):
            offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def ast_walk_formatted(tree):
    """f-strings that format `type(x).__name__` or `x.__class__.__name__`."""
    import ast

    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "__name__":
            inner = node.value.value
            if (isinstance(inner, ast.Call) and getattr(inner.func, "id", "") == "type") or \
                    (isinstance(inner, ast.Attribute) and inner.attr == "__class__"):
                yield node
