"""Where a running `tiwiz serve` is: `RUNS/.tiwiz-serve-PORT.json` in the runs folder it serves, with its pid and
address (never the token), written when it listens and removed when it stops. `tiwiz serve --stop` and the wizard's
"where to see the previews" hint read it. Torch-free and aiohttp-free."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.atomic import atomic_write_json

RECORD = ".tiwiz-serve-{port}.json"


def write_record(runs_root: Path, port: int, **fields) -> Path | None:
    """Record this process as the server of `runs_root` on `port`. None when the folder is not writable (the server
    runs anyway; only --stop and the wizard's hint cannot find it)."""
    path = Path(runs_root) / RECORD.format(port=port)
    try:
        Path(runs_root).mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"pid": os.getpid(), "port": port, "started": time.time(), **fields})
    except OSError:
        return None
    return path


def running_servers(runs_root: Path, port: int | None = None) -> list[dict]:
    """The records of the live servers of this runs folder (records left by dead ones are skipped)."""
    found = []
    for path in sorted(Path(runs_root).glob(RECORD.format(port=port if port is not None else "*"))):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if is_server(pid):
            found.append({**record, "record": str(path)})
    return found


def is_server(pid: int) -> bool:
    """Whether `pid` is a `tiwiz serve` (or `tiwiz wizard --serve`) process, not a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            words = fh.read().split(b"\0")
    except OSError:
        return False
    return b"serve" in words or any(w.startswith(b"--serve") for w in words)


def remove_record(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
