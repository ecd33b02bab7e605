"""Helper subprocesses that print JSON lines (`tiwiz preprocess --jsonl`, `tiwiz doctor --json`, ...).

The UI never imports the heavy libraries; it runs `python -m core.cli ...` and reads its output."""

from __future__ import annotations

import asyncio
import json
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


async def run_jsonl(args: list[str], on_event: Callable[[dict], None] | None = None, *, what: str = "The command",
                    cwd: str | None = None) -> list[dict]:
    """Run `python -m core.cli ARGS`, call `on_event` for each JSON line on stdout, and return all events.
    Raises TiwizError with the command's own message when it fails. Cancelling the caller kills the process."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, limit=STREAM_LIMIT, cwd=cwd,
    )
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
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        drainer.cancel()
        raise
    if rc != 0:
        raise TiwizError(_error_from_stderr(b"".join(stderr_chunks).decode("utf-8", "replace"), rc, what))
    return events


async def run_json(args: list[str], *, what: str = "The command") -> object:
    """Run a command that prints one JSON document on stdout; return it parsed."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        raise
    if proc.returncode != 0:
        raise TiwizError(_error_from_stderr(err.decode("utf-8", "replace"), proc.returncode, what))
    try:
        return json.loads(out.decode("utf-8", "replace"))
    except ValueError as exc:
        raise TiwizError(f"{what} printed something that is not JSON.") from exc
