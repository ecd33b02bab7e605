"""Helper subprocesses that print JSON lines (`tiwiz preprocess --jsonl`, `tiwiz doctor --json`, ...).

The UI never imports the heavy libraries; it runs `python -m core.cli ...` and reads its output. Each helper runs in
a process group of its own, and when the worker awaiting it is cancelled (the user cancels, leaves the screen or
quits) the whole group is killed: preprocessing's pool workers and the demo's model writer included."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Callable

from core.errors import TiwizError

STREAM_LIMIT = 1 << 20


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", *args]


def _error_from_stderr(stderr: str, rc: int, what: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("tiwiz: error:"):
            return line[len("tiwiz: error:"):].strip()
    if lines:
        return f"{what} failed (exit {rc}): {lines[-1]}"
    return f"{what} failed (exit {rc})."


async def spawn(argv: list[str], *, cwd: str | None = None, limit: int = STREAM_LIMIT) -> asyncio.subprocess.Process:
    """Start a helper with piped stdout/stderr, no stdin, in a new process group (see `kill_group`)."""
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        limit=limit, cwd=cwd, start_new_session=True,
    )


async def kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill a helper started by `spawn` and everything it started, then reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                proc.kill()
            except ProcessLookupError:
                pass
    try:
        await asyncio.shield(proc.wait())
    except asyncio.CancelledError:
        pass


async def run_process(argv: list[str], *, cwd: str | None = None) -> tuple[int, bytes, bytes]:
    """Run a helper to the end and return (exit code, stdout, stderr); cancelling the caller kills it."""
    proc = await spawn(argv, cwd=cwd)
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        await kill_group(proc)
        raise
    return proc.returncode, out, err


async def run_jsonl(args: list[str], on_event: Callable[[dict], None] | None = None, *, what: str = "The command",
                    cwd: str | None = None) -> list[dict]:
    """Run `python -m core.cli ARGS`, call `on_event` for each JSON line on stdout, and return all events.
    Raises TiwizError with the command's own message when it fails. Cancelling the caller kills the process."""
    proc = await spawn(cli_command(*args), cwd=cwd)
    events: list[dict] = []
    stderr_chunks: list[bytes] = []

    async def drain_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(65536):
            stderr_chunks.append(chunk)

    drainer = asyncio.ensure_future(drain_stderr())
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
        rc = await proc.wait()
        await drainer
    except asyncio.CancelledError:
        drainer.cancel()
        await kill_group(proc)
        raise
    if rc != 0:
        raise TiwizError(_error_from_stderr(b"".join(stderr_chunks).decode("utf-8", "replace"), rc, what))
    return events


async def run_json(args: list[str], *, what: str = "The command", ok_codes: tuple[int, ...] = (0,)) -> object:
    """Run a command that prints one JSON document on stdout; return it parsed. An exit code in `ok_codes` is a
    result, not a failure (`tiwiz doctor --json` exits 1 when a finding is an error, and still prints them all)."""
    rc, out, err = await run_process(cli_command(*args))
    if rc not in ok_codes:
        raise TiwizError(_error_from_stderr(err.decode("utf-8", "replace"), rc, what))
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except ValueError as exc:
        if rc != 0:
            raise TiwizError(_error_from_stderr(err.decode("utf-8", "replace"), rc, what)) from exc
        raise TiwizError(f"{what} printed something that is not JSON.") from exc
