"""Cold start of the wizard: wall time from launching a fresh interpreter to the first screen being shown.

Runs the real app headless (`tiwiz` with no arguments does the same work, plus the terminal) N times and prints the
figures. Target: <= 0.6 s. Also prints which heavy modules got imported (there must be none).

    python bench/tui_cold_start.py [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
from tui.app import TiwizApp
t_import = time.time()

class Bench(TiwizApp):
    def on_mount(self):
        super().on_mount()
        self.call_after_refresh(self.done)

    def done(self):
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))
        print(json.dumps({"first_screen": time.time(), "imported": t_import, "heavy": heavy}), flush=True)
        self.exit()

Bench(save=False, image_protocol="halfcell").run(headless=True, size=(100, 30))
"""


BASELINE = r"""
import sys, time, json
from textual.app import App
from textual.widgets import Footer, Static
t_import = time.time()

class Bare(App):
    def compose(self):
        yield Static("hello")
        yield Footer()

    def on_mount(self):
        self.call_after_refresh(self.done)

    def done(self):
        print(json.dumps({"first_screen": time.time(), "imported": t_import, "heavy": []}), flush=True)
        self.exit()

Bare().run(headless=True, size=(100, 30))
"""


def once(env: dict, child: str = CHILD) -> dict:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", child, str(ROOT)], capture_output=True, text=True, env=env,
                         cwd=env["HOME"], timeout=60)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {"first_screen_s": data["first_screen"] - start, "import_s": data["imported"] - start,
            "heavy": data["heavy"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HOME=home, TIWIZ_HOME=os.path.join(home, "tiwiz"), TEXTUAL_ANIMATIONS="none")
        once(env)  # warm the OS file cache and .pyc files
        runs = [once(env) for _ in range(args.n)]
        bare = [once(env, BASELINE)["first_screen_s"] for _ in range(args.n)]
    first = [r["first_screen_s"] for r in runs]
    imports = [r["import_s"] for r in runs]
    print(f"tiwiz cold start to first screen over {args.n} runs: median {statistics.median(first):.3f} s, "
          f"min {min(first):.3f} s, max {max(first):.3f} s (target <= 0.6 s)")
    print(f"  of which interpreter start + `import tui.app`: median {statistics.median(imports):.3f} s")
    print(f"  baseline, a bare Textual app (Static + Footer) on this machine: median {statistics.median(bare):.3f} s")
    heavy = sorted({m for r in runs for m in r["heavy"]})
    print(f"  heavy modules imported: {', '.join(heavy) if heavy else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
