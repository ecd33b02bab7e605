"""Helpers for the TUI tests: a deterministic app factory and recorded run folders written like a real worker's."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from PIL import Image

from core.atomic import atomic_write_json

T0 = 1_750_000_000.0  # fixed event times


def freeze_cursor(monkeypatch) -> None:
    """No blinking cursors, so screenshots do not depend on timing."""
    from textual.widgets import Input

    monkeypatch.setattr(Input, "_toggle_cursor", lambda self: None)


def gradient_png(path: Path, seed: int, size: int = 64) -> Path:
    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = ((x * 4 + seed * 40) % 256, (y * 4) % 256, (seed * 90 + x + y) % 256)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def recorded_events(name: str = "mycat", steps: int = 120, max_steps: int = 400, every: int = 40,
                    finished: bool = False) -> list[dict]:
    """A run's events as the trainer writes them (built with the trainer's own run_events constructors): started,
    steps with a decaying loss, validation, checkpoints and previews every `every` steps, a warning, and `finished`
    when asked."""
    from core.runs import run_events as ev

    events = [ev.Started(time=T0, max_steps=max_steps, step=0, name=name, device="cuda", precision="bf16",
                         n_images=24, model="v1-5.safetensors")]
    for step in range(1, steps + 1):
        loss = 0.12 + 0.08 * math.exp(-step / 60) + 0.03 * math.sin(step * 1.7)
        events.append(ev.Step(time=T0 + step, step=step, max_steps=max_steps, epoch=(step - 1) // 24 + 1,
                              loss=round(loss, 5), lr=0.005, it_s=2.5, elapsed=step / 2.5,
                              gpu_mem_used=int(7.5 * 2**30), gpu_mem_total=24 * 2**30, gpu_util=93))
        if step % every == 0:
            events.append(ev.Validation(time=T0 + step, step=step, val_loss=round(0.14 + 0.05 * math.exp(-step / 80), 5)))
            events.append(ev.Checkpoint(time=T0 + step, step=step, pt=f"embeddings/{name}-{step}.pt",
                                        safetensors=f"embeddings/{name}-{step}.safetensors"))
            events.append(ev.Preview(time=T0 + step, step=step, path=f"previews/{name}-{step}.png"))
        if step == 50:
            events.append(ev.Warning(time=T0 + step, message="loss spike at step 50 (0.9)"))
    if finished:
        events.append(ev.Finished(time=T0 + steps + 1, step=steps, pt=f"{name}.pt", safetensors=f"{name}.safetensors"))
    return [e.to_json() for e in events]


def write_recorded_run(run_dir: Path, events: list[dict], *, state: str = "running") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    for e in events:
        if e["type"] == "preview":
            gradient_png(run_dir / e["path"], seed=e["step"] // 40)
    last = [e for e in events if e["type"] == "step"]
    atomic_write_json(run_dir / "status.json", {
        "pid": None, "state": state, "name": events[0].get("name"), "step": last[-1]["step"] if last else 0,
        "max_steps": events[0].get("max_steps"), "last_loss": last[-1]["loss"] if last else None,
        "last_checkpoint": None, "updated": events[-1]["time"],
    })
    return run_dir


def make_photos(folder: Path, n: int = 4, captions: dict[int, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        gradient_png(folder / f"photo-{i:02d}.png", seed=i, size=96)
    for i, text in (captions or {}).items():
        (folder / f"photo-{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def copy_model(src: Path, dest: Path) -> Path:
    if not dest.exists():
        shutil.copytree(src, dest)
    return dest


def dump_text(app) -> None:
    """With TIWIZ_DUMP_DIR set, write the screen as plain text there (for reviewing snapshots in a terminal)."""
    import io
    import os

    folder = os.environ.get("TIWIZ_DUMP_DIR")
    if not folder:
        return
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      color_system="truecolor", legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    name = f"{type(app.screen).__name__}-{width}x{height}.txt"
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / name).write_text(console.export_text(styles=False), encoding="utf-8")


async def wait_idle(pilot, timeout: float = 60.0) -> None:
    """Wait until the app's own workers are done (not DirectoryTree's loader, which lives as long as the tree)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    await pilot.pause()
    while time.monotonic() < deadline:
        busy = [w for w in pilot.app.workers if not w.is_finished and w.name != "_loader"]
        if not busy:
            break
        await asyncio.sleep(0.05)
    await pilot.pause(0.1)
    await pilot.pause()


async def burst(pilot, *keys: str) -> None:
    """Send keys the way a paste or a fast typist delivers them: all queued at once, before the app handles any.
    (`pilot.press` waits for the app to go idle after every key, which hides ordering races.) Then wait until idle."""
    from textual import events

    app = pilot.app
    for key in keys:
        name = {" ": "space", ",": "comma", ".": "full_stop", "-": "minus", "/": "slash"}.get(key, key)
        event = events.Key(name, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)
    await wait_idle(pilot)


# --- the wizard as the console script starts it ----------------------------------------------------------------------

def console_home(tmp_path: Path, monkeypatch) -> Path:
    """A user's shell for `tiwiz`: a home of their own, tmp_path as the current folder, no tiwiz variables set (the
    runs go to ./runs, the wizard state to ~/.config/tiwiz)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("TIWIZ_HOME", "TIWIZ_RUNS_DIR", "TIWIZ_IMAGES", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    freeze_cursor(monkeypatch)
    return tmp_path


def console_app(argv: list[str] | None = None, saved=None):
    """The app exactly as `tiwiz ARGV` builds it; `saved` (a WizardState) is written first as the wizard state a
    previous session left, so "Continue" on the Start screen opens its stage."""
    from tui.app import make_app
    from tui.state import default_state_path, save_state

    if saved is not None:
        save_state(saved, default_state_path())
    return make_app(list(argv or []))


async def continue_saved(pilot, stage: str) -> None:
    """On the Start screen, `c` (Continue) opens the saved stage."""
    await wait_idle(pilot)
    await pilot.press("c")
    await wait_idle(pilot)
    assert getattr(pilot.app.screen, "STAGE", None) == stage, pilot.app.screen


async def until(pilot, condition, timeout: float, what: str) -> None:
    """Wait (polling the app) until `condition()` holds; on timeout say what was awaited and the screen's message."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            shown = [str(w.content) for w in pilot.app.screen.query("#message")]
            raise AssertionError(f"timed out waiting for {what} (message: {shown}, screen: {pilot.app.screen})")
        await asyncio.sleep(0.2)
        await pilot.pause()


def message_text(app) -> str:
    return " ".join(str(w.content) for w in app.screen.query("#message"))


def write_embedding(stem: Path, seed: int = 0, name: str = "mycat") -> tuple[Path, Path]:
    """A real (tiny, one 32-wide vector) embedding at STEM.pt and STEM.safetensors, as the trainer saves it: what
    `tiwiz install` and the Finish screen's copy accept. Different seeds give different bytes."""
    import torch

    from core.embeddings.vectors import save_embedding

    stem.parent.mkdir(parents=True, exist_ok=True)
    vectors = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed))
    return save_embedding(vectors, stem, name=name, step=seed, base_model="tiny", base_hash=None, init_text="cat",
                          overwrite=True)


def drive(app, body, size: tuple[int, int] = (80, 24)):
    """Start `app` at `size` the way the Pilot tests do, wait until it settles, run `await body(pilot)` and return
    its result (the app is closed afterwards)."""
    import asyncio

    async def go():
        async with app.run_test(size=size) as pilot:
            await wait_idle(pilot)
            return await body(pilot)

    return asyncio.run(go())
