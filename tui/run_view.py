"""What the training monitor shows, folded from a run's events. Plain Python (no Textual), so it is unit-testable and
the monitor only redraws from it on a timer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EMA_ALPHA = 0.1  # smoothing of the loss curve (weight of the newest point)

# states shown in the header; "running" until a terminal event arrives
TERMINAL_STATES = ("finished", "stopped", "failed", "killed")


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_rate(it_s: float | None) -> str:
    """tqdm's habit: it/s when at least one step a second, s/it below."""
    if not it_s or it_s <= 0:
        return "-- it/s"
    if it_s >= 1:
        return f"{it_s:.2f} it/s"
    return f"{1 / it_s:.2f} s/it"


@dataclass
class Checkpoint:
    step: int
    pt: str = ""
    safetensors: str = ""
    preview: str = ""  # path relative to the run folder, when a preview exists for this step


@dataclass
class RunView:
    run_dir: Path
    state: str = "waiting"
    name: str = ""
    step: int = 0
    max_steps: int = 0
    epoch: int | None = None
    lr: float | None = None
    it_s: float | None = None
    elapsed: float | None = None
    device: str = ""
    dtype: str = ""
    n_images: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    smoothed: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    previews: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    final_pt: str = ""
    final_safetensors: str = ""
    gpu: dict = field(default_factory=dict)  # mem_used, mem_total (bytes), util (percent), name
    version: int = 0  # bumped on every applied event, so the UI redraws only on change

    def apply_all(self, events) -> bool:
        changed = False
        for event in events:
            changed = self.apply(event) or changed
        return changed

    def apply(self, event: dict) -> bool:
        kind = event.get("type")
        if not isinstance(kind, str):
            return False
        handler = getattr(self, f"_on_{kind}", None)
        self._take_gpu(event)
        if handler is not None:
            handler(event)
        self.version += 1
        return True

    # --- event handlers --------------------------------------------------------------------------------------

    def _on_started(self, e: dict) -> None:
        self.state = "running"
        self.error = ""
        self.name = str(e.get("name") or self.name)
        self.max_steps = _int(e.get("max_steps"), self.max_steps)
        self.step = _int(e.get("step"), self.step)
        self.device = str(e.get("device") or self.device)
        self.dtype = str(e.get("dtype") or self.dtype)
        self.n_images = _int(e.get("n_images"), self.n_images)
        # A resumed run replays from its saved step: drop points past it (they were never saved).
        self.losses = [p for p in self.losses if p[0] <= self.step]
        self.smoothed = [p for p in self.smoothed if p[0] <= self.step]
        self.val_losses = [p for p in self.val_losses if p[0] <= self.step]

    def _on_step(self, e: dict) -> None:
        if self.state not in ("running", "stopping"):
            self.state = "running"
        self.step = _int(e.get("step"), self.step)
        self.max_steps = _int(e.get("max_steps"), self.max_steps)
        self.epoch = _int(e.get("epoch"), self.epoch)
        self.lr = _float(e.get("lr"), self.lr)
        self.it_s = _float(e.get("it_s"), self.it_s)
        self.elapsed = _float(e.get("elapsed"), self.elapsed)
        loss = _float(e.get("loss"), None)
        if loss is not None and loss == loss:
            prev = self.smoothed[-1][1] if self.smoothed else loss
            self.losses.append((self.step, loss))
            self.smoothed.append((self.step, prev + EMA_ALPHA * (loss - prev)))

    def _on_validation(self, e: dict) -> None:
        val = _float(e.get("val_loss"), None)
        if val is not None:
            self.val_losses.append((_int(e.get("step"), self.step), val))

    def _on_checkpoint(self, e: dict) -> None:
        step = _int(e.get("step"), self.step)
        self.checkpoints = [c for c in self.checkpoints if c.step != step]
        self.checkpoints.append(
            Checkpoint(step, str(e.get("pt") or ""), str(e.get("safetensors") or ""), self.previews.get(step, ""))
        )
        self.checkpoints.sort(key=lambda c: c.step)

    def _on_preview(self, e: dict) -> None:
        step = _int(e.get("step"), self.step)
        path = str(e.get("path") or "")
        if not path:
            return
        self.previews[step] = path
        for c in self.checkpoints:
            if c.step == step:
                c.preview = path

    def _on_warning(self, e: dict) -> None:
        msg = str(e.get("message") or "").strip()
        if msg:
            self.warnings.append(msg)

    def _on_error(self, e: dict) -> None:
        self.state = "failed"
        self.error = str(e.get("message") or "The run failed.")

    def _on_stopping(self, e: dict) -> None:
        self.state = "stopping"

    def _on_stopped(self, e: dict) -> None:
        self.state = "stopped"
        self.step = _int(e.get("step"), self.step)

    def _on_finished(self, e: dict) -> None:
        self.state = "finished"
        self.step = _int(e.get("step"), self.step)
        self.final_pt = str(e.get("pt") or "")
        self.final_safetensors = str(e.get("safetensors") or "")

    def _on_gpu(self, e: dict) -> None:
        pass  # fields taken by _take_gpu

    def _take_gpu(self, e: dict) -> None:
        for src, dst in (("gpu_mem_used", "mem_used"), ("gpu_mem_total", "mem_total"), ("gpu_util", "util"),
                         ("gpu_name", "name"), ("cuda_mem_allocated", "mem_used"), ("cuda_mem_total", "mem_total")):
            if e.get(src) is not None:
                self.gpu[dst] = e[src]

    def set_liveness(self, state: str, reason: str = "") -> bool:
        """Take the run's liveness from core.runs.folder (status.json + worker lock): a worker that died without a final
        event shows as killed. Returns True when the displayed state changed."""
        if state == "killed" and self.state in ("waiting", "running", "stopping", "starting"):
            self.state = "killed"
            self.error = f"The worker is gone (killed at step {self.step}). Resume it from the start screen (r)."
        elif state == "starting" and self.state == "waiting":
            self.state = "starting"
        elif state == "failed" and self.state in ("waiting", "starting") and reason:
            self.state, self.error = "failed", reason
        else:
            return False
        self.version += 1
        return True

    # --- derived figures -------------------------------------------------------------------------------------

    @property
    def eta(self) -> float | None:
        if not self.it_s or self.it_s <= 0 or not self.max_steps or self.state != "running":
            return None
        return max(self.max_steps - self.step, 0) / self.it_s

    @property
    def latest_preview(self) -> tuple[int, str] | None:
        if not self.previews:
            return None
        step = max(self.previews)
        return step, self.previews[step]

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    @property
    def last_smoothed(self) -> float | None:
        return self.smoothed[-1][1] if self.smoothed else None

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def gpu_line(self) -> str:
        """"GPU 7.1/24.0 GiB · 93%" when the run reports CUDA figures, else ""."""
        if not self.gpu:
            return ""
        parts = []
        used, total = self.gpu.get("mem_used"), self.gpu.get("mem_total")
        if isinstance(used, (int, float)):
            mem = f"{used / 2**30:.1f}"
            if isinstance(total, (int, float)) and total:
                mem += f"/{total / 2**30:.1f}"
            parts.append(mem + " GiB")
        util = self.gpu.get("util")
        if isinstance(util, (int, float)):
            parts.append(f"{util:.0f}%")
        return ("GPU " + " · ".join(parts)) if parts else ""


def _int(value, default):
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _float(value, default):
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default
