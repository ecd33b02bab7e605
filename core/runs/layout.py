"""The run folder's layout (one name per file), what makes a folder a run, and `status.json` I/O. Torch-free.

```
RUN_DIR/
  config.toml      the TrainConfig (what `tiwiz resume` restarts from)
  events.jsonl     append-only event log, one JSON object a line (the source of truth for every viewer)
  status.json      atomic snapshot of the run (core.runs.status.RunStatus): state, step, last checkpoint ...
  commands/        a viewer drops a file named stop / save / preview (run_events.Command); the worker consumes it
                   between steps, and warns about (and removes) anything else it finds there; a `commands` that is
                   not a folder (a file, a link) is moved aside, never followed
  worker.lock      flock held by the worker for its whole life
  worker.log       the worker's stdout/stderr (tracebacks)
  embeddings/ previews/ state/latest.pt loss.csv NAME.pt NAME.safetensors   (written by the trainer)
                   loss.csv: step,epoch,loss,val_loss,lr,elapsed_s,holdout_loss,editability, one row a step
                   (core.runs.lossfile)
  image_ranking.json  the images that fight the concept, worst first (core.training.image_ranking), written at the
                   end of a run and by `tiwiz doctor --run RUN`
```

Nothing in the layout may be a link: the worker and `start`/`resume` write, truncate or delete there, and a run folder
unpacked from an archive or on a shared volume must never make tiwiz touch what a link points at (`check_no_links`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.atomic import atomic_write_json, link_problem
from core.errors import TiwizError
from core.runs.status import RunStatus

CONFIG = "config.toml"
EVENTS = "events.jsonl"
STATUS = "status.json"
COMMANDS = "commands"
LOCK = "worker.lock"
LOG = "worker.log"
STATE = "state/latest.pt"
LOSS = "loss.csv"
RESERVE = ".tiwiz-reserve"  # disk space the worker holds for its last words (core.runs.worker)
LAYOUT = (CONFIG, EVENTS, STATUS, COMMANDS, LOCK, LOG, LOSS, RESERVE, "state", "embeddings", "previews")
RUN_MARKERS = (STATUS, EVENTS, CONFIG)  # any one of them makes a folder a run folder
TRAINED_MARKERS = (STATE, LOSS, EVENTS)  # a non-empty one means training happened there


def default_root() -> Path:
    return Path(os.environ.get("TIWIZ_RUNS_DIR") or "runs")


def is_run_dir(path: str | os.PathLike) -> bool:
    """The one definition of a run folder: a folder holding status.json, events.jsonl or config.toml."""
    path = Path(path)
    return path.is_dir() and any((path / f).exists() for f in RUN_MARKERS)


def holds_run(run_dir: str | os.PathLike) -> str | None:
    """The file showing that training happened in `run_dir` (a checkpoint state, loss rows, events), else None:
    such a folder is never started over without --overwrite."""
    for marker in TRAINED_MARKERS:
        try:
            if (Path(run_dir) / marker).stat().st_size > 0:
                return marker
        except OSError:
            continue
    return None


# ---- status.json --------------------------------------------------------------------------------------------------
def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The status dict, None when there is none yet. A corrupt file raises TiwizError naming it."""
    path = Path(run_dir) / STATUS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise TiwizError(f"{path}: corrupt (not UTF-8 text)") from None
    except OSError as exc:
        raise TiwizError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise TiwizError(f"{path}: corrupt (JSON nested too deeply)") from None
    except ValueError as exc:
        raise TiwizError(f"{path}: corrupt ({exc})") from None
    if not isinstance(data, dict):
        raise TiwizError(f"{path}: corrupt (not a JSON object)")
    return data


def write_status(run_dir: str | os.PathLike, status: dict | RunStatus) -> dict:
    """Write status.json (a RunStatus, or its JSON object) with `updated` set to now; returns what was written."""
    status = status.to_json() if isinstance(status, RunStatus) else dict(status)
    status["updated"] = round(time.time(), 3)
    atomic_write_json(Path(run_dir) / STATUS, status, in_place_when_full=True)  # "failed" even on a full disk
    return status


def read_run_status(run_dir: str | os.PathLike) -> tuple[RunStatus, list[str]] | None:
    """The typed status and the problems met reading it (fields dropped), None when there is none yet; TiwizError for
    a file that cannot be read at all."""
    data = read_status(run_dir)
    return None if data is None else RunStatus.parse(data)


def check_no_links(run_dir: str | os.PathLike) -> None:
    """TiwizError naming every entry of the run folder's layout that is a link (symbolic, or a hard link of a file
    we append to), before anything is written or deleted there. The run folder itself may be a link."""
    problems = [problem for name in LAYOUT if (problem := link_problem(Path(run_dir) / name))]
    if problems:
        raise TiwizError(f"{'; '.join(problems)}: tiwiz never writes or deletes through a link in a run folder; "
                         "remove the link (what it points at is left alone) and try again")
