"""The textual-inversion training loop. Read it top to bottom: `run` sets the session up, says `started`, trains in
`_loop` until the last step, a stop or the auto-stop rule, then saves and says how it ended.

- `core.training.session.setup` builds the one value the loop works on (`Session`: model, vectors, optimizer, data,
  generators, progress); each concern is a module that takes it: `update` (one optimizer step over grad_accum
  micro-batches), `guard` (a NaN/inf loss or blown-up vectors is undone), `validation` and `watch` (the fixed-seed
  validation loss, the hold-out, the auto-stop rule, the best step), `checkpoints` (embedding files and
  state/latest.pt, from which a resume continues bit for bit) and `reports` (vector reports, previews).
  `step_plan` decides gradient checkpointing and whether each step runs eager or captured as CUDA graphs (`compile`).
- Files (in `out_dir`, the run folder): config.toml, loss.csv, embeddings/NAME-STEP.{pt,safetensors},
  previews/NAME-STEP.png, state/latest.pt, and the final NAME.pt / NAME.safetensors at the top.
- Events: started, step, validation, checkpoint, preview, warning, error, stopping, stopped, finished (paths relative
  to out_dir). `run()` emits `error` for any exception before re-raising it, and returns an `Outcome` otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.errors import TiwizError
from core.models.device import gpu_fields
from core.runs import run_events as ev
from core.runs.lossfile import LossLog
from core.runs.run_events import EndReason
from core.training import checkpoints, guard, reports, update, validation
from core.training.image_ranking import record_ranking
from core.training.autostop import unreachable_reason
from core.training.config import TrainConfig
from core.training.resume_state import final_files_step
from core.training.session import Session, setup
from core.training.step_plan import StepPlan

GPU_POLL_S = 2.0  # GPU memory and utilisation ride on a step event at most this often


@dataclass(frozen=True)
class Outcome:
    """How a run that did not fail ended (`Trainer.run`'s answer). `reason` is the `finished`/`stopped` event's."""

    reason: EndReason
    step: int
    max_steps: int
    pt: str                       # the final files, relative to the run folder ("" for no .pt)
    safetensors: str
    last_loss: float | None
    last_val_loss: float | None
    best_step: int | None
    best_checkpoint: str | None
    best_basis: str | None

    @property
    def finished(self) -> bool:
        return self.reason.finished


def _editability(s: Session) -> float | None:
    """The editability signal of the validation just done (core.training.editability), if measured."""
    return s.editability.last if s.editability is not None else None


class Trainer:
    def __init__(self, config: TrainConfig, out_dir, sink, poll_commands: Callable[[], list[str]] | None = None):
        self.config = dataclasses.replace(config)  # our own copy: the run adjusts it (e.g. vectors) and saves it
        self.out_dir = Path(out_dir)
        self.sink = sink
        self.poll_commands = poll_commands or (lambda: [])
        self.allow_data_change: bool | None = None  # None: $TIWIZ_ALLOW_DATA_CHANGE=1 (set by `tiwiz resume`)
        self.session: Session | None = None  # the run's state, once set up
        self.capture_impl: str | None = None  # benches and tests: force a capture implementation (step_plan)
        self._pending_commands: list = []  # commands read between micro-batches, handled after the step
        self._stop_requested = False  # a plain attribute: safe to set from a signal handler or another thread

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (thread and signal safe)."""
        self._stop_requested = True

    def run(self, resume: bool = False) -> Outcome:
        try:
            return self._run(resume)
        except BaseException as exc:
            s = self.session
            full = checkpoints.disk_full_error(exc, self.out_dir, s.step if s else 0, s.last_saved_step if s else -1)
            shown = full or exc
            message = str(shown) if isinstance(shown, TiwizError) else f"{exc.__class__.__name__}: {exc}"
            with contextlib.suppress(Exception):
                self.sink.emit(ev.Error(message=message))
            if full is not None:
                raise full from exc
            raise

    def _run(self, resume: bool) -> Outcome:
        s = self.session = setup(self.config, self.out_dir, self.sink, resume, self.allow_data_change)
        end_step = self._end_step(s)
        s.config.to_toml(s.out_dir / "config.toml")
        log = LossLog(s.out_dir / "loss.csv", keep_until_step=s.step if s.resumed else None)
        try:
            self.sink.emit(ev.Started(
                max_steps=end_step, step=s.step, name=s.name, device=str(s.device),
                precision=ev.precision_name(s.precision.name), n_images=len(s.dataset), model=s.model.name,
                family=s.model.family, resumed=s.resumed, n_holdout=len(s.holdout_indices),
                auto_stop=s.config.auto_stop, auto_stop_window=s.config.auto_stop_window, threads=s.threads.threads))
            plan = StepPlan.start(s, end_step, self.capture_impl)  # checkpointing auto; eager or captured steps
            if not s.resumed and s.validate_every:
                val = validation.validate(s)
                log.write(0, 0, None, val, None, 0.0, holdout_loss=s.watch.last[2], editability=_editability(s))
            if not s.resumed and s.config.preview_every:
                reports.preview(s)  # the preview prompt with the init vectors, before an hour is spent on it
            reason = self._loop(s, end_step, log, plan)
            return self._end(s, reason, end_step)
        finally:
            log.close()

    def _loop(self, s: Session, end_step: int, log: LossLog, plan: StepPlan) -> EndReason:
        """Train until end_step, or until a stop or the auto-stop rule."""
        cfg = s.config
        loss_avg, step_times, gpu_polled = None, [], 0.0
        while s.step < end_step:
            reason = self._handle_commands(s)
            if reason:
                return reason
            s.threads.tick()
            lr = s.lr_schedule.rate_at(s.step) * s.lr_scale
            t0 = time.monotonic()
            total = plan.step(s, lr, self._stop_between_micro_batches)  # update.train_step, or captured
            if total is update.STEP_ABANDONED:
                continue  # a stop between micro-batches (_handle_commands ends the loop), or the step runs again
            loss = guard.judge(s, total)
            if loss is None:
                continue  # undone, and a warning says why
            s.step += 1
            guard.kept(s)
            if s.ema is not None:
                s.ema.update(s.vectors)
                s.norms.apply(s.ema.average)  # an average of normed vectors is shorter: preserve puts it back
            s.last_loss = loss
            loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss
            step_times = (step_times + [time.monotonic() - t0])[-20:]
            it_s = len(step_times) / sum(step_times) if sum(step_times) > 0 else 0.0  # training steps only
            elapsed = s.elapsed()

            val = validation.validate(s) if s.validate_every and s.step % s.validate_every == 0 else None
            log.write(s.step, s.feed.epoch, loss, val, lr, elapsed,
                      holdout_loss=s.watch.last[2] if val is not None else None,
                      editability=_editability(s) if val is not None else None)
            gpu = {}
            if s.device.type == "cuda" and time.monotonic() - gpu_polled > GPU_POLL_S:
                gpu_polled, gpu = time.monotonic(), gpu_fields(s.device)
            self.sink.emit(ev.Step(step=s.step, max_steps=end_step, epoch=s.feed.epoch, loss=loss, loss_avg=loss_avg,
                                   lr=lr, it_s=it_s, elapsed=round(elapsed, 3), **gpu))
            if cfg.save_every and s.step % cfg.save_every == 0 and s.step < end_step:
                checkpoints.save(s)
            if cfg.preview_every and s.step % cfg.preview_every == 0:
                reports.preview(s)
            if val is not None and s.watch.save_due(s.step, s.last_saved_step):
                checkpoints.save(s)  # the suggested best step gets its file
            if val is not None and cfg.auto_stop and s.watch.stop:
                return EndReason.AUTO_STOP
        return EndReason.STEPS

    def _end(self, s: Session, reason: EndReason, end_step: int) -> Outcome:
        """The final files, the last previews, and the `finished` or `stopped` event."""
        pt, st = checkpoints.save(s, final=True)
        if reason.finished:
            reports.final_previews(s)
            record_ranking(s)  # the images that fight the concept (image_ranking.json)
        best_step, best_file, best_basis = s.watch.best(s.out_dir, s.name)
        best = dict(best_step=best_step, best_checkpoint=best_file, best_basis=best_basis)
        if reason.finished:
            message = None
            if reason == EndReason.AUTO_STOP:
                w = s.watch.state
                message = f"auto-stop: the validation loss went flat at step {s.step} of {end_step} (variance " \
                          f"ratio {w.ratio:.2f} < {w.threshold:g} over the last {w.window} steps)"
            self.sink.emit(ev.Finished(step=s.step, pt=pt, safetensors=st, reason=reason, message=message, **best))
        else:
            self.sink.emit(ev.Stopped(step=s.step, reason=reason, pt=pt, safetensors=st, **best))
        return Outcome(reason=reason, step=s.step, max_steps=end_step, pt=pt, safetensors=st, last_loss=s.last_loss,
                       last_val_loss=s.watch.last[1] if s.watch.last else None, **best)

    def _end_step(self, s: Session) -> int:
        """The step the run ends at (where the lr schedule ends), with a warning for anything that bends it; an error
        for a run already there."""
        cfg, emit = s.config, self.sink.emit
        end_step = s.lr_schedule.end_step(cfg.steps)
        if s.lr_schedule.stops_early(cfg.steps):
            emit(ev.Warning(message=(
                f"the lr schedule {cfg.lr!r} ends at step {end_step}, so training stops there although steps = "
                f"{cfg.steps} (A1111 behaviour). End the schedule with a bare rate to train to {cfg.steps}.")))
        if s.resumed and s.step >= end_step and final_files_step(s.out_dir, s.name) != s.step:
            # Killed during the final save: the state reached the end before NAME.pt/.safetensors were written.
            emit(ev.Warning(step=s.step, message=(
                f"the run ended at step {s.step} but its final files {s.name}.pt/.safetensors are missing or "
                "older (it was stopped during its final save); writing them now")))
        elif s.step >= end_step:
            raise TiwizError(f"this run is already at step {s.step} of {end_step}; raise steps to continue "
                             f"(e.g. `tiwiz resume RUN --steps {s.step + 1000}`)")
        why = unreachable_reason(s.validate_every, cfg.auto_stop_window, end_step) if cfg.auto_stop else None
        if why:
            emit(ev.Warning(message=f"auto-stop cannot fire in this run: {why}. It trains to the last step"))
        return end_step

    def _handle_commands(self, s: Session) -> EndReason | None:
        pending = list(self._pending_commands)
        self._pending_commands.clear()
        for command in pending + list(self.poll_commands() or []):
            if command == "save":
                checkpoints.save(s)
            elif command == "preview":
                reports.preview(s)
            elif command == "stop":
                self.sink.emit(ev.Stopping(step=s.step, reason="stop requested"))
                return EndReason.STOP
            else:
                self.sink.emit(ev.Warning(message=f"ignored unknown command {command!r}"))
        if self._stop_requested:
            self.sink.emit(ev.Stopping(step=s.step, reason="interrupted"))
            return EndReason.INTERRUPTED
        return None

    def _stop_between_micro_batches(self) -> bool:
        """A stop (signal or `stop` command) is honoured within one forward/backward, not after grad_accum of them.
        Other commands wait for the end of the step."""
        taken = list(self.poll_commands() or [])
        stop = "stop" in taken
        self._pending_commands.extend((["stop"] if stop else []) + [c for c in taken if c != "stop"])
        return self._stop_requested or stop
