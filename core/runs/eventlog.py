"""Reading `events.jsonl`: whole lines only (a torn last line, left by a kill mid-write, is skipped), incrementally
for followers (`EventReader`), the tail for listings, and the repair a new life makes before appending. The dicts are
typed by `core.runs.run_events.parse` (the reducer does it). Torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.atomic import open_own_file
from core.runs.layout import EVENTS


def parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Parse complete JSON lines. Returns (events, bad_lines); lines that are not a JSON object (or are nested too
    deeply to parse) are skipped. The dicts are typed by `run_events.parse` (the reducer does it)."""
    if not data:
        return [], 0
    try:  # fast path: one json.loads for the whole chunk
        events = json.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]")
        if all(isinstance(e, dict) for e in events):
            return events, 0
    except (ValueError, RecursionError):
        pass
    events, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            bad += 1
    return events, bad


class EventReader:
    """Incremental reader of events.jsonl: each `read()` returns the complete lines appended since the last call.
    An unterminated last line (a write in progress, or a crash mid-write) is left for the next call."""

    CHUNK = 8 << 20

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.bad_lines = 0
        self._ino = None

    def read(self, max_bytes: int | None = None) -> list[dict]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with fh:
            st = os.fstat(fh.fileno())
            if self._ino is not None and (st.st_ino != self._ino or st.st_size < self.offset):
                self.offset = 0  # the file was replaced: start over
            self._ino = st.st_ino
            if st.st_size <= self.offset:
                return []
            fh.seek(self.offset)
            data = fh.read(min(st.st_size - self.offset, max_bytes or st.st_size))
        end = data.rfind(b"\n")
        if end < 0:
            return []
        data = data[: end + 1]
        self.offset += len(data)
        events, bad = parse_lines(data)
        self.bad_lines += bad
        return events

    def pending_partial(self) -> bool:
        """True when the file ends with an unterminated line (a truncated last line once the writer is gone)."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False


def read_events(run_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    """All complete events of a run and a report {"bad_lines": n, "truncated_tail": bool}."""
    reader = EventReader(Path(run_dir) / EVENTS)
    events = reader.read()
    return events, {"bad_lines": reader.bad_lines, "truncated_tail": reader.pending_partial()}


def last_events(run_dir: str | os.PathLike, max_bytes: int = 256 << 10) -> list[dict]:
    """The complete events in the last `max_bytes` of the log (cheap, for listing)."""
    path = Path(run_dir) / EVENTS
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    if start:
        data = data[data.find(b"\n") + 1:]  # drop the first, probably partial, line
    end = data.rfind(b"\n")
    return parse_lines(data[: end + 1])[0] if end >= 0 else []


def repair_event_log(run_dir: str | os.PathLike) -> bool:
    """Terminate an unterminated last line (left by a kill mid-write) so the next append starts a fresh line.
    The partial line stays in the file and readers skip it. Returns True when a repair was made."""
    path = Path(run_dir) / EVENTS
    try:
        fd = open_own_file(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    with os.fdopen(fd, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return False
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return False
        fh.write(b"\n")
        return True
