"""The one fold of a run's events into its state: phase, progress, loss history, checkpoints (with their previews),
warnings, error and final files. `tiwiz runs` (when status.json is missing), `tiwiz attach`, the CLI progress, the
TUI monitor and the Finish screen all read a run through `RunState`. Torch-free and Textual-free.

    state = RunState()
    state.apply_all(events)       # typed events or the dicts of events.jsonl (parsed with run_events.parse)
    state.phase, state.step, state.losses, state.checkpoints ...

Resume truncation lives here (once): a `started` event at step M drops the loss points after M, which a killed life
wrote after its last checkpoint and which the resumed run trains again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.runs import run_events as ev
from core.runs.autostop_state import AutoStopState
from core.runs.run_events import RunPhase

EMA_ALPHA = 0.1  # smoothing of the plotted loss curve (weight of the newest point)


@dataclass
class CheckpointRow:
    step: int
    pt: str = ""
    safetensors: str = ""
    preview: str = ""  # the preview rendered at this step (relative path), whichever event came first
    norms: list | None = None  # each vector's norm at this step
    nearest: list | None = None  # each vector's nearest vocabulary tokens: [[token, cosine], ...]
    best: bool = False  # saved because the held-out loss reached a new low


@dataclass
class RunState:
    phase: RunPhase = RunPhase.STARTING
    name: str = ""
    step: int = 0
    max_steps: int = 0
    epoch: int | None = None
    lr: float | None = None
    it_s: float | None = None
    elapsed: float | None = None
    loss_avg: float | None = None
    device: str = ""
    precision: str = ""
    n_images: int | None = None
    model: str = ""
    family: str = ""  # sd1, sd2 or sdxl ("" in logs from before the field)
    resumed: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)
    smoothed: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[CheckpointRow] = field(default_factory=list)  # sorted by step
    previews: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    reason: str = ""  # why it stopped or failed
    final_pt: str = ""
    final_safetensors: str = ""
    finish_reason: str = ""  # how a finished run ended: "steps", or "auto_stop" (the validation loss went flat)
    holdout_losses: list[tuple[int, float]] = field(default_factory=list)  # the held-out images' validation loss
    editability: list[tuple[int, float]] = field(default_factory=list)  # the editability signal at each validation
    ranking: str = ""  # the ranked images' file (relative), once the run ranked them
    flagged_images: list[tuple[str, str]] = field(default_factory=list)  # (image, what to do) worst first
    n_holdout: int | None = None
    best_step: int | None = None  # the suggested best step (lowest held-out loss, else the auto-stop rule's, ...)
    best_basis: str | None = None  # what it rests on: a key of run_events.BEST_BASES (None in logs from before it)
    best_checkpoint: str = ""  # its .safetensors checkpoint (relative), once the run says which
    auto_stop: bool | None = None  # whether the auto-stop rule ends the run (it is watched either way)
    auto_stop_state: AutoStopState | None = None  # the rule's latest state
    vocab_median_norm: float | None = None
    rendering_preview: int | None = None  # the step of a preview the worker is rendering now, else None
    gpu: dict = field(default_factory=dict)  # mem_used, mem_total (bytes), util (percent)
    compile_mode: str = ""  # how the step runs: eager, cuda_graph or compile ("" before the `compile` event)
    compile_reason: str = ""
    compile_seconds: float = 0.0  # capture/compile seconds of this life so far
    gradient_checkpointing: bool | None = None  # None in logs from before the `memory_plan` event
    checkpointing_reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # events applied, by type
    skipped: int = 0  # events dropped by the parser (wrong field types), each also in `warnings`
    updated: float | None = None  # time of the newest event
    version: int = 0  # bumped on every change, so a UI redraws only when something changed

    @classmethod
    def fold(cls, events) -> "RunState":
        state = cls()
        state.apply_all(events)
        return state

    def apply_all(self, events) -> bool:
        """Fold many events (the same as `apply` on each; the loop is inlined: a history can be 100k+ events)."""
        handlers, parse, counts, typed = _HANDLERS, ev.parse, self.counts, ev.RunEvent
        applied = 0
        for event in events:
            if not isinstance(event, typed):
                event = parse(event)
                if event is None:
                    continue
            handler = handlers.get(type(event))
            if handler is None:
                continue
            handler(self, event)
            counts[event.TYPE] = counts.get(event.TYPE, 0) + 1
            if event.time:
                self.updated = event.time
            applied += 1
        self.version += applied
        return applied > 0

    def apply(self, event) -> bool:
        """Fold one event (typed, or a dict from events.jsonl). Returns False when it was ignored (unknown type)."""
        if not isinstance(event, ev.RunEvent):
            event = ev.parse(event)
            if event is None:
                return False
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return False
        handler(self, event)
        self.counts[event.TYPE] = self.counts.get(event.TYPE, 0) + 1
        if event.time:
            self.updated = event.time
        self.version += 1
        return True

    # ---- handlers ---------------------------------------------------------------------------------------------------
    def _started(self, e: ev.Started) -> None:
        self.phase, self.error, self.reason = RunPhase.RUNNING, "", ""
        self.name = e.name or self.name
        self.max_steps = e.max_steps or self.max_steps
        self.step = e.step
        self.device = e.device or self.device
        self.precision = e.precision or self.precision
        self.n_images = e.n_images or self.n_images
        self.model = e.model or self.model
        self.family = e.family or self.family
        self.resumed = e.resumed
        self.final_pt = self.final_safetensors = ""
        self.finish_reason = ""
        self.n_holdout = e.n_holdout if e.n_holdout is not None else self.n_holdout
        self.auto_stop = e.auto_stop if e.auto_stop is not None else self.auto_stop
        self._truncate(e.step)

    def _truncate(self, step: int) -> None:
        """Drop the points after `step`: a resume trains them again."""
        for series in (self.losses, self.smoothed, self.val_losses, self.holdout_losses, self.editability):
            while series and series[-1][0] > step:
                series.pop()

    def _step(self, e: ev.Step) -> None:  # the hot path of a replay: plain attribute work only
        if self.phase is not RunPhase.RUNNING and self.phase is not RunPhase.STOPPING:
            self.phase = RunPhase.RUNNING
        step = self.step = e.step
        if e.max_steps:
            self.max_steps = e.max_steps
        self.epoch = e.epoch
        if e.lr is not None:
            self.lr = e.lr
        if e.it_s is not None:
            self.it_s = e.it_s
        if e.elapsed is not None:
            self.elapsed = e.elapsed
        if e.loss_avg is not None:
            self.loss_avg = e.loss_avg
        loss = e.loss
        if loss is not None and loss == loss:
            losses, smoothed = self.losses, self.smoothed
            if losses and losses[-1][0] >= step:  # a log without `started` between two lives
                self._truncate(step - 1)
            prev = smoothed[-1][1] if smoothed else loss
            losses.append((step, loss))
            smoothed.append((step, prev + EMA_ALPHA * (loss - prev)))
        if self.rendering_preview is not None:  # a step after the render: it is over (done or failed)
            self.rendering_preview = None
        if e.gpu_mem_used is not None or e.gpu_util is not None:
            for value, key in ((e.gpu_mem_used, "mem_used"), (e.gpu_mem_total, "mem_total"), (e.gpu_util, "util")):
                if value is not None:
                    self.gpu[key] = value

    def _validation(self, e: ev.Validation) -> None:
        if self.val_losses and self.val_losses[-1][0] >= e.step:
            while self.val_losses and self.val_losses[-1][0] >= e.step:
                self.val_losses.pop()
        self.val_losses.append((e.step, e.val_loss))
        if e.holdout_loss is not None:
            while self.holdout_losses and self.holdout_losses[-1][0] >= e.step:
                self.holdout_losses.pop()
            self.holdout_losses.append((e.step, e.holdout_loss))
        if e.editability is not None:
            while self.editability and self.editability[-1][0] >= e.step:
                self.editability.pop()
            self.editability.append((e.step, e.editability))
        if e.best_step is not None:
            self.best_step, self.best_basis = e.best_step, e.best_basis
        if e.auto_stop_window is not None and e.auto_stop_threshold is not None:
            self.auto_stop_state = AutoStopState(
                step=e.step, window=e.auto_stop_window, threshold=e.auto_stop_threshold,
                watched=e.auto_stop_watched or 0, ratio=e.auto_stop_ratio, stop=False, fired_at=e.auto_stop_fired_at)

    def _checkpoint(self, e: ev.Checkpoint) -> None:
        row = CheckpointRow(e.step, e.pt, e.safetensors, self.previews.get(e.step, ""), norms=e.norms,
                            nearest=e.nearest, best=bool(e.best))
        if e.vocab_median_norm is not None:
            self.vocab_median_norm = e.vocab_median_norm
        if e.best_step is not None:
            self.best_step, self.best_basis = e.best_step, e.best_basis
        rows = [c for c in self.checkpoints if c.step != e.step]
        if rows and rows[-1].step > e.step:
            rows.append(row)
            rows.sort(key=lambda c: c.step)
        else:
            rows.append(row)
        self.checkpoints = rows

    def _preview_rendering(self, e: ev.PreviewRendering) -> None:
        self.rendering_preview = e.step

    def _preview(self, e: ev.Preview) -> None:
        self.rendering_preview = None
        if not e.path:
            return
        self.previews[e.step] = e.path
        for row in reversed(self.checkpoints):  # a preview after its checkpoint marks it too
            if row.step == e.step:
                row.preview = e.path
                break

    def _compile(self, e: ev.Compile) -> None:
        if e.seconds is None:  # the choice, made as each life of the run begins
            self.compile_mode, self.compile_reason, self.compile_seconds = e.mode, e.reason, 0.0
            return
        self.compile_mode = e.mode
        self.compile_seconds += e.seconds

    def _memory_plan(self, e: ev.MemoryPlan) -> None:
        self.gradient_checkpointing, self.checkpointing_reason = e.gradient_checkpointing, e.reason

    @property
    def speed_label(self) -> str:
        """'CUDA graphs (captured in 3.1 s) · checkpointing off' on a GPU; '' on a CPU (always eager, never
        checkpointing) and before the run said."""
        parts = []
        if not self.device.startswith("cuda"):
            return ""
        if self.compile_mode:
            words = {"cuda_graph": "CUDA graphs", "compile": "torch.compile"}.get(self.compile_mode,
                                                                              self.compile_mode)
            parts.append(words + (f" (captured in {self.compile_seconds:.1f} s)" if self.compile_seconds else ""))
        if self.gradient_checkpointing is not None:
            parts.append(f"checkpointing {'on' if self.gradient_checkpointing else 'off'}")
        return " · ".join(parts)

    def _warning(self, e: ev.Warning) -> None:
        if self.rendering_preview is not None and e.step == self.rendering_preview:
            self.rendering_preview = None  # the render failed (its warning says why)
        if e.skipped:
            self.skipped += 1
        message = e.message.strip()
        if message:
            self.warnings.append(message)

    def _error(self, e: ev.Error) -> None:
        self.rendering_preview = None
        self.phase = RunPhase.FAILED
        self.error = self.reason = e.message or "the run failed"

    def _stopping(self, e: ev.Stopping) -> None:
        if not self.phase.final:
            self.phase = RunPhase.STOPPING
        self.reason = e.reason or self.reason

    def _stopped(self, e: ev.Stopped) -> None:
        self.rendering_preview = None
        self.phase = RunPhase.STOPPED
        self.step = e.step
        self.reason = self.reason or e.reason
        self.final_pt, self.final_safetensors = e.pt, e.safetensors
        self._best_from(e)

    def _finished(self, e: ev.Finished) -> None:
        self.rendering_preview = None
        self.phase, self.reason = RunPhase.FINISHED, e.message or ""
        self.finish_reason = e.reason or "steps"
        self.step = e.step
        self.final_pt, self.final_safetensors = e.pt, e.safetensors
        self._best_from(e)

    def _best_from(self, e) -> None:
        if e.best_step is not None:
            self.best_step, self.best_basis = e.best_step, e.best_basis
        self.best_checkpoint = e.best_checkpoint or self.best_checkpoint

    def _images_ranked(self, e: ev.ImagesRanked) -> None:
        self.ranking = e.path
        self.flagged_images = list(zip(e.flagged, e.reasons + [""] * (len(e.flagged) - len(e.reasons))))

    @property
    def last_editability(self) -> float | None:
        return self.editability[-1][1] if self.editability else None

    def _exit(self, e: ev.Exit) -> None:
        self.rendering_preview = None
        if e.state.final:
            self.phase = e.state
        self.step = max(self.step, e.step)
        if e.reason:
            self.reason = e.reason
            if e.state == RunPhase.FAILED and not self.error:
                self.error = e.reason

    # ---- liveness and derived figures --------------------------------------------------------------------------
    def worker_started(self, step: int) -> None:
        """A worker began a life of the run at `step` (0, or the checkpoint a resume continues from); it is running
        while it loads the model, before its `started` event."""
        self.phase, self.error, self.reason, self.step = RunPhase.RUNNING, "", "", step
        self.rendering_preview = None
        self.version += 1

    def resume_requested(self) -> None:
        """A new life of the run was asked for (a resume spawned its worker): starting until its `started` event
        arrives, so a viewer never shows the old life's end meanwhile; a silent death then shows as killed."""
        self.phase, self.error, self.reason = RunPhase.STARTING, "", ""
        self.rendering_preview = None
        self.version += 1

    def set_liveness(self, phase, reason: str = "") -> bool:
        """Take the phase `core.runs.folder` finds (status.json + the worker lock): a worker that died without a final
        event shows as killed. Returns True when the state changed."""
        phase = RunPhase.parse(phase)
        if phase == RunPhase.KILLED and self.phase.active:
            self.phase = RunPhase.KILLED
            self.error = f"The worker is gone (killed at step {self.step}). Resume it from the start screen (r)."
        elif phase == RunPhase.FAILED and self.phase == RunPhase.STARTING and reason:
            self.phase, self.error, self.reason = RunPhase.FAILED, reason, reason
        elif phase in (RunPhase.STOPPED, RunPhase.FINISHED, RunPhase.FAILED) and self.phase.active:
            self.phase = phase  # the worker ended and wrote its status before its last event reached us
            self.reason = reason or self.reason
        else:
            return False
        self.version += 1
        return True

    @property
    def last_checkpoint(self) -> int | None:
        return self.checkpoints[-1].step if self.checkpoints else None

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def last_smoothed(self) -> float | None:
        return self.smoothed[-1][1] if self.smoothed else None

    @property
    def auto_stop_label(self) -> str:
        """The auto-stop rule's state in words ('watching 120 of 310 steps', 'flat since step 400 ...'), or ''."""
        return self.auto_stop_state.label() if self.auto_stop_state is not None else ""

    @property
    def best_label(self) -> str:
        """'best step 240 (lowest held-out loss)', or '' while there is none."""
        return ev.best_step_text(self.best_step, self.best_basis)

    @property
    def best_checkpoint_row(self) -> CheckpointRow | None:
        """The checkpoint of the suggested best step, where one was saved."""
        if self.best_step is None:
            return None
        return next((c for c in self.checkpoints if c.step == self.best_step), None)

    @property
    def last_val_loss(self) -> float | None:
        return self.val_losses[-1][1] if self.val_losses else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, while running."""
        if not self.it_s or self.it_s <= 0 or not self.max_steps or self.phase != RunPhase.RUNNING:
            return None
        return max(self.max_steps - self.step, 0) / self.it_s

    @property
    def latest_preview(self) -> tuple[int, str] | None:
        if not self.previews:
            return None
        step = max(self.previews)
        return step, self.previews[step]


_HANDLERS = {
    ev.Started: RunState._started, ev.Step: RunState._step, ev.Validation: RunState._validation,
    ev.Checkpoint: RunState._checkpoint, ev.Preview: RunState._preview,
    ev.PreviewRendering: RunState._preview_rendering, ev.Warning: RunState._warning,
    ev.Error: RunState._error, ev.Stopping: RunState._stopping, ev.Stopped: RunState._stopped,
    ev.Finished: RunState._finished, ev.Exit: RunState._exit,
    ev.Compile: RunState._compile, ev.MemoryPlan: RunState._memory_plan,
    ev.ImagesRanked: RunState._images_ranked,
}
