"""The demo's wizard state: `core.world.demo_job.prepare_demo` (the shipped tiny model and images of a concept) run
in a helper subprocess (killed if the wizard cancels it), turned into a wizard state whose every stage is filled in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import TiwizError
from tui.jobs import run_process
from tui.state import WizardState, tiwiz_home

_HELPER = (
    "import json, sys\n"
    "from core.world.demo_job import prepare_demo\n"
    "from core.errors import TiwizError\n"
    "try:\n"
    "    r = prepare_demo(sys.argv[1])\n"
    "except TiwizError as e:\n"
    "    print('tiwiz: error: %s' % e, file=sys.stderr); sys.exit(2)\n"
    "print(json.dumps(r, default=str))\n"
)
EARLIER = {"model", "data", "name", "init_text", "vectors", "overwrite", "output"}


def state_from_demo(result: dict) -> WizardState:
    config = dict(result.get("config") or {})
    state = WizardState(demo=True)
    state.model = str(result.get("model_dir") or config.get("model", ""))
    state.source = state.dataset = str(result.get("data_dir") or config.get("data", ""))
    state.skip_preprocess = True
    state.name = str(config.get("name", "demo"))
    state.init_text = str(config.get("init_text", "*"))
    state.vectors = int(config.get("vectors", 1))
    state.train = {k: v for k, v in config.items() if k not in EARLIER}
    state.stage = "captions"
    return state


async def prepare_demo_state(workdir: str | Path | None = None) -> WizardState:
    workdir = Path(workdir) if workdir else tiwiz_home() / "demo"
    rc, out, err = await run_process([sys.executable, "-c", _HELPER, str(workdir)])  # cancelling kills it
    if rc != 0:
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"exit {rc}"
        raise TiwizError(f"Could not prepare the demo: {msg.replace('tiwiz: error: ', '')}")
    try:
        result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise TiwizError("Could not prepare the demo: the helper printed no result.") from exc
    return state_from_demo(result)
