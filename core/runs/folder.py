"""The run folder, one import for its readers and writers (`from core.runs import folder as runs`). Each part has its
own module; this one only gathers them:

- `core.runs.layout`: the file names, what makes a folder a run (`is_run_dir`, `holds_run`), `status.json` I/O and the
  no-links check;
- `core.runs.liveness`: the worker lock and the pid check;
- `core.runs.eventlog`: reading `events.jsonl` (whole lines, incrementally, the tail);
- `core.runs.commands`: the `commands/` drop box;
- `core.runs.listing`: `RunInfo` (the status record plus liveness), `inspect_run`, `list_runs`, `resolve_run`.

Torch-free (the TUI imports it).
"""

from core.errors import TiwizError  # noqa: F401 - `runs.TiwizError`, as callers have long written it
from core.runs.commands import COMMAND_NAMES, CommandBox, clear_commands, send_command  # noqa: F401
from core.runs.eventlog import EventReader, last_events, parse_lines, read_events, repair_event_log  # noqa: F401
from core.runs.layout import (  # noqa: F401
    COMMANDS, CONFIG, EVENTS, LAYOUT, LOCK, LOG, LOSS, RESERVE, STATE, STATUS, check_no_links, default_root, holds_run,
    is_run_dir, read_run_status, read_status, write_status)
from core.runs.listing import (  # noqa: F401
    STARTING_GRACE_S, RunInfo, describe_phase, inspect_run, list_runs, resolve_run)
from core.runs.liveness import WorkerLock, acquire_lock, file_lock_is_held, lock_is_held, pid_is_worker  # noqa: F401
from core.runs.status import RunStatus  # noqa: F401
