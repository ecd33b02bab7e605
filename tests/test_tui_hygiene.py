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
