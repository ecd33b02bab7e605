"""The run API for UIs (the TUI and the CLI): start, follow, command, list and resume runs. Torch-free.

Training always happens in a detached `python -m core.runs.worker RUN_DIR` process; nothing here holds a pipe to it, so a
viewer can die at any moment without touching the training.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.atomic import open_own_file, remove_own_file
from core.runs import folder as runs
from core.runs import run_events as ev
from core.errors import TiwizError
from core.runs.folder import RunInfo, inspect_run, list_runs, send_command  # noqa: F401 - re-exported for the TUI
from core.runs.run_events import RunPhase
from core.runs.run_state import RunState  # noqa: F401 - re-exported for the TUI
from core.runs.status import RunStatus

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_PATH_FIELDS = ("model", "data", "init_from")


def _as_config(config):
    from core.training.config import TrainConfig

    if isinstance(config, TrainConfig):
        return TrainConfig.from_dict(config.to_dict())  # a validated copy; the caller's object stays as it was
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    raise TiwizError(f"start_run: expected a TrainConfig or a dict, got {type(config).__name__}")


def _absolutize(config) -> None:
    """The worker may be resumed from any directory: store paths absolute."""
    for key in _PATH_FIELDS:
        value = getattr(config, key)
        if value:
            setattr(config, key, str(Path(value).expanduser().resolve()))
    template = config.template
    if template and (template.endswith(".txt") or os.sep in template) and Path(template).expanduser().exists():
        config.template = str(Path(template).expanduser().resolve())


def new_run_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    root = Path(root) if root is not None else runs.default_root()
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (name or "run")).strip("._") or "run"
    base = root / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class AlreadyFinished(TiwizError):
    """`resume_run` of a run that finished all its steps (a later life has nothing to do)."""


def start_run(config, root: str | os.PathLike | None = None, name: str | None = None,
              spawned: list | None = None, env: dict[str, str] | None = None) -> Path:
    """Create the run folder (config.output, or ROOT/NAME-YYYYmmdd-HHMMSS), write config.toml and spawn the worker.
    Returns the run folder. Raises TiwizError for a bad config or a folder that already holds a run. The worker's
    pid is appended to `spawned` when given (to tell it from another worker that won the folder's lock). `env`: set
    in the worker's environment (e.g. the queue's CUDA_VISIBLE_DEVICES); this process's stays as it is."""
    config = prepare_run(config, root, name)
    run_dir = Path(config.output)
    pid = _spawn(run_dir, resume=False, name=config.name, max_steps=config.steps, env_extra=env)
    if spawned is not None:
        spawned.append(pid)
    return run_dir


def prepare_run(config, root: str | os.PathLike | None = None, name: str | None = None):
    """Everything `start_run` does before spawning: check the config and the folder, write config.toml. Returns the
    config as written (its `output` is the run folder). `train --foreground` trains in it in-process."""
    config = _as_config(config)
    _absolutize(config)
    for key in ("model", "data"):
        if not Path(getattr(config, key)).exists():
            raise TiwizError(f"{key}: {getattr(config, key)} does not exist")
    check_model_files(config.model)
    if config.output:
        run_dir = Path(config.output).expanduser().resolve()
    else:
        run_dir = new_run_dir(name or config.name, root).resolve()
    check_output_place(run_dir, config)
    info = inspect_run(run_dir) if run_dir.exists() else None
    if info is not None and (info.alive or runs.lock_is_held(run_dir)):
        who = f" (pid {info.pid})" if info.pid else ""
        raise TiwizError(f"{run_dir}: a worker is already training there{who}; "
                         f"`tiwiz attach {run_dir}` to watch it")
    marker = runs.holds_run(run_dir) if run_dir.exists() else None
    if marker and not config.overwrite:
        raise TiwizError(f"{run_dir} already holds a training run ({marker}); `tiwiz resume {run_dir}` continues "
                         "it, or choose another output folder, or pass --overwrite to start over in it")
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.check_no_links(run_dir)
    if marker:  # --overwrite: keep the old log beside the new one rather than mixing two runs in one file
        old = run_dir / runs.EVENTS
        if old.exists():
            os.replace(old, run_dir / f"events-{time.strftime('%Y%m%d-%H%M%S')}.jsonl.old")
    config.output = str(run_dir)
    config.to_toml(run_dir / runs.CONFIG)
    return config


def check_output_place(run_dir: Path, config) -> None:
    """TiwizError when the run folder is the data or model folder or inside one: the run's previews would become
    training images, its files would land among the model's."""
    for key in ("data", "model"):
        source = Path(getattr(config, key)).expanduser().resolve()
        if source.is_dir() and (run_dir == source or source in run_dir.parents):
            raise TiwizError(f"output: {run_dir} is inside the {key} folder {source}; choose a run folder outside it")


def check_model_files(model: str) -> None:
    """TiwizError when the model, or a file in its folder or in a folder of its parts, is not a regular file: a worker
    blocked opening a FIFO runs no step, so no stop reaches it. Links are followed (a Hugging Face cache is links)."""
    import stat

    from core.models.headers import require_regular_file

    path = Path(model)
    if not path.exists():
        raise TiwizError(f"model: {path} does not exist (moved or deleted since the run was set up?)")
    try:
        if not path.is_dir():
            require_regular_file(path)
            return
        for folder in [path, *(p for p in path.iterdir() if p.is_dir())]:
            for entry in folder.iterdir():
                try:
                    mode = entry.stat().st_mode
                except OSError:
                    continue  # a dangling link: the loader says what is missing
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    require_regular_file(entry)
    except TiwizError as exc:
        raise TiwizError(f"model: {exc}") from None
    except OSError as exc:
        raise TiwizError(f"model: cannot read {path} ({exc.strerror or exc})") from None


def restarts_from_zero(run_dir: str | os.PathLike) -> bool:
    """True when `resume_run` would start the run again from step 0 (it was stopped before its first checkpoint)."""
    run_dir = Path(run_dir)
    return not (run_dir / runs.STATE).is_file() and (run_dir / runs.CONFIG).is_file()


def resume_run(run_dir: str | os.PathLike, steps: int | None = None, allow_data_change: bool = False,
               env: dict[str, str] | None = None) -> Path:
    """Continue a stopped, killed, failed or finished run from state/latest.pt; `steps` raises the step count.
    A run stopped before its first checkpoint starts again from step 0 with the same config (`restarts_from_zero`).
    `allow_data_change` lets it continue on a data folder that changed since the checkpoint; `env` as for
    `start_run`. AlreadyFinished (a TiwizError) when the run finished all its steps."""
    env = {**(env or {}), **({"TIWIZ_ALLOW_DATA_CHANGE": "1"} if allow_data_change else {})}
    from core.training.config import TrainConfig

    run_dir = Path(run_dir).resolve()
    info = inspect_run(run_dir)
    if info.alive:
        raise TiwizError(f"{run_dir} is still training (pid {info.pid}); `tiwiz attach {run_dir}` to watch it")
    runs.check_no_links(run_dir)
    if not (run_dir / runs.STATE).is_file():
        if not (run_dir / runs.CONFIG).is_file():
            raise TiwizError(f"nothing to resume in {run_dir}: it has no {runs.CONFIG} and no checkpoint")
        config = TrainConfig.from_toml(run_dir / runs.CONFIG)
        check_model_files(config.model)
        if steps is not None:
            config.steps = int(steps)
            config.to_toml(run_dir / runs.CONFIG)
        remove_own_file(run_dir / runs.LOSS)  # rows of the lost steps; the restart writes its own
        _spawn(run_dir, resume=False, name=config.name, max_steps=config.steps, env_extra=env)
        return run_dir
    config = TrainConfig.from_toml(run_dir / runs.CONFIG)
    check_model_files(config.model)
    saved = info.last_checkpoint or 0
    if steps is not None:
        if steps <= saved:
            raise TiwizError(f"--steps {steps}: the run's last checkpoint is at step {saved}; give more steps")
        config.steps = int(steps)
        config.to_toml(run_dir / runs.CONFIG)
    elif (info.state == "finished" and saved >= (info.max_steps or config.steps)) or _final_files_done(run_dir, config):
        done = max(saved, config.steps)
        _settle_finished(run_dir, info, done)
        raise AlreadyFinished(f"{run_dir.name} finished all {done} steps; `tiwiz resume {run_dir} --steps "
                              f"{done + 1000}` trains further")
    _spawn(run_dir, resume=True, name=config.name, max_steps=config.steps, previous=info, env_extra=env)
    return run_dir


def _settle_finished(run_dir: Path, info, done: int) -> None:
    """A complete run killed before its last status.json write said so: make the folder say "finished" and drop the
    kill's temp files, so `tiwiz runs` never shows a finished run as killed."""
    from core.atomic import remove_stale_temps

    remove_stale_temps(run_dir, ("embeddings", "previews", "state"))
    if info.state != "finished":
        try:
            found = runs.read_run_status(run_dir)
        except TiwizError:  # a status.json torn by the kill: the events and final files say what it should hold
            found = None
        status = found[0] if found else RunStatus(name=info.name, max_steps=info.max_steps)
        runs.write_status(run_dir, dataclasses.replace(status, state=RunPhase.FINISHED, pid=None, step=done,
                                                       reason="finished (status repaired after a kill)"))


def _final_files_done(run_dir: Path, config) -> bool:
    """True when the final NAME.pt/.safetensors hold the last step (a kill after them but before status.json said
    "finished" must not send a resume that can only fail)."""
    from core.embeddings.vectors import sanitize_name
    from core.training.resume_state import final_files_step

    try:
        step = final_files_step(run_dir, sanitize_name(config.name))
    except TiwizError:
        return False
    return step is not None and step >= config.steps


def _spawn(run_dir: Path, resume: bool, name: str, max_steps: int, previous: RunInfo | None = None,
           env_extra: dict | None = None) -> int:
    runs.check_no_links(run_dir)  # nothing below may write or delete through a link
    runs.clear_commands(run_dir)  # a `stop` an earlier life never read must not stop the new one
    runs.write_status(run_dir, RunStatus(
        state=RunPhase.STARTING, name=name, step=previous.step if previous else 0, max_steps=max_steps,
        last_checkpoint=previous.last_checkpoint if previous else None,
        last_loss=previous.last_loss if previous else None, resumed=resume))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TIWIZ_ALLOW_DATA_CHANGE", None)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "core.runs.worker", str(run_dir)] + (["--resume"] if resume else [])
    log_fd = open_own_file(run_dir / runs.LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(cmd, cwd=run_dir, env=env, stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    try:  # record the pid unless the worker already wrote its own status (same pid: -m runs in this process)
        found = runs.read_run_status(run_dir)
        if found and found[0].state == RunPhase.STARTING and found[0].pid is None:
            runs.write_status(run_dir, dataclasses.replace(found[0], pid=proc.pid))
    except (TiwizError, OSError):
        pass
    # Reap it when it ends so a long-lived UI collects no zombies; the worker never depends on this process.
    threading.Thread(target=proc.wait, name=f"reap-worker-{proc.pid}", daemon=True).start()
    return proc.pid


def stop_run(run_dir: str | os.PathLike, timeout: float | None = 120.0, poll_s: float = 0.2) -> RunInfo:
    """Ask the worker to save and stop (commands/stop) and wait up to `timeout` s for it to end. Returns the final
    RunInfo (still alive if the timeout ran out)."""
    run_dir = Path(run_dir)
    info = inspect_run(run_dir)
    if not info.alive:
        return info
    send_command(run_dir, "stop")
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        time.sleep(poll_s)
        info = inspect_run(run_dir)
        if not info.alive:
            break
    return info


class Follower:
    """Replays a run's events.jsonl from the start, then follows it. `poll()` never blocks: it returns the complete
    events appended since the previous call ([] when nothing is new). Several followers may watch one run."""

    def __init__(self, run_dir: str | os.PathLike, max_bytes_per_poll: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.reader = runs.EventReader(self.run_dir / runs.EVENTS)
        self.max_bytes = max_bytes_per_poll
        self.count = 0

    def poll(self) -> list[dict]:
        """The new events as the dicts of events.jsonl (what `attach --json` prints)."""
        events = self.reader.read(self.max_bytes)
        self.count += len(events)
        return events

    def poll_events(self) -> list[ev.RunEvent]:
        """The new events, typed (`run_events.parse`): unknown types dropped, bad ones as skip warnings."""
        return ev.parse_all(self.poll())

    @property
    def bad_lines(self) -> int:
        return self.reader.bad_lines

    def caught_up(self) -> bool:
        """True when every complete line has been returned."""
        try:
            size = self.reader.path.stat().st_size
        except OSError:
            return True
        if size <= self.reader.offset:
            return True
        with open(self.reader.path, "rb") as fh:
            fh.seek(self.reader.offset)
            return b"\n" not in fh.read()

    def info(self) -> RunInfo:
        return inspect_run(self.run_dir)

    def done(self) -> bool:
        """True when no worker is running and everything it wrote has been returned."""
        return self.caught_up() and not self.info().alive

    def iter(self, interval: float = 0.25):
        """Blocking generator for scripts and the CLI: yields events until the run is over."""
        while True:
            events = self.poll()
            yield from events
            if not events:
                if self.done():
                    yield from self.poll()
                    return
                time.sleep(interval)


def follow(run_dir: str | os.PathLike) -> Follower:
    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        raise TiwizError(f"{run_dir}: not a run folder")
    return Follower(run_dir)
