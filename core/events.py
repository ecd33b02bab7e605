"""The one event interface: training, preprocessing and captioning report progress through an EventSink.

An event is a flat JSON-able dict with at least "type" and "time" (unix seconds). A training run emits typed events
(`core.runs.run_events`: `sink.emit(Step(step=1, ...))`); preprocessing and captioning emit `sink.emit("progress",
done=3, total=10)`. Every sink takes both and hands on the JSON dict. Sinks must never raise into the caller's hot loop
for a display problem; a JsonlSink write failure is re-raised because losing the log is real.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Protocol


class EventSink(Protocol):
    def emit(self, type, **fields) -> dict: ...


def make_event(type, **fields) -> dict:
    """The JSON dict of an event: a typed run event (`to_json()`), or a type name with its fields."""
    if hasattr(type, "to_json"):
        return type.to_json()
    event = {"type": type, "time": round(time.time(), 3)}
    event.update(fields)
    return event


class ListSink:
    """Keeps events in memory (tests, in-process callers)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def emit(self, type, **fields) -> dict:
        event = make_event(type, **fields)
        self.events.append(event)
        return event

    def of_type(self, type: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type]

    def typed(self) -> list:
        """The events as `core.runs.run_events` types (what the reducer and the contract tests read)."""
        from core.runs.run_events import parse_all

        return parse_all(self.events)


class CallbackSink:
    def __init__(self, callback: Callable[[dict], None]) -> None:
        self.callback = callback

    def emit(self, type, **fields) -> dict:
        event = make_event(type, **fields)
        self.callback(event)
        return event


class TeeSink:
    def __init__(self, *sinks) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def emit(self, type, **fields) -> dict:
        event = make_event(type, **fields)
        for sink in self.sinks:
            if hasattr(sink, "write_event"):
                sink.write_event(event)
            else:
                sink.emit(**event)
        return event


class JsonlSink:
    """Appends one JSON object per line. Each line is written with a single write() call and flushed, so a reader
    never sees a half line except after a crash mid-write (readers skip an unterminated last line)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write_event(self, event: dict) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def emit(self, type, **fields) -> dict:
        event = make_event(type, **fields)
        self.write_event(event)
        return event

    def close(self) -> None:
        with self._lock:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError:
                pass
            self._fh.close()


class StdoutJsonSink:
    """One JSON object per line on stdout: how helper subprocesses (preprocess, captioning) talk to the TUI."""

    def emit(self, type, **fields) -> dict:
        event = make_event(type, **fields)
        print(json.dumps(event, ensure_ascii=False, separators=(",", ":")), flush=True)
        return event
