"""The monitor's header: state, step/max, it/s, ETA, elapsed, lr, and GPU memory/utilisation on CUDA.

Each figure is a reactive: `show(view)` copies them from the run's view, and the header repaints only when one of
them changed."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from core.models.parts import FAMILY_NAMES
from core.runs.run_events import RunPhase
from tui.run_view import RunView, format_duration, format_rate

STATE_STYLES = {
    "running": "bold green", "stopping": "bold yellow", "stopped": "bold yellow", "finished": "bold cyan",
    "failed": "bold red", "starting": "dim", "killed": "bold red", "damaged": "bold red",
}


def about_text(view: RunView) -> str:
    """The second line: the run's name, the model's family, device and precision, images, epoch and, on a GPU, how
    the step runs (dim)."""
    text = view.name or view.run_dir.name
    if view.family:
        text += f" · {FAMILY_NAMES.get(view.family, view.family)}"
    if view.device:
        text += f" · {view.device}{' ' + view.precision if view.precision else ''}"
    if view.n_images:
        text += f" · {view.n_images} images"
    if view.epoch is not None:
        text += f" · epoch {view.epoch}"
    if view.speed_label:  # GPU runs: eager or captured, checkpointing on or off
        text += f" · {view.speed_label}"
    return text


class RunHeader(Widget):
    DEFAULT_CSS = """
    RunHeader { height: 2; dock: top; background: $primary-background; padding: 0 1; }
    """

    phase: reactive[RunPhase] = reactive(RunPhase.STARTING)
    step: reactive[int] = reactive(0)
    max_steps: reactive[int] = reactive(0)
    it_s: reactive[float | None] = reactive(None)
    eta: reactive[float | None] = reactive(None)
    elapsed: reactive[float | None] = reactive(None)
    lr: reactive[float | None] = reactive(None)
    about: reactive[str] = reactive("")
    gpu: reactive[str] = reactive("")

    def __init__(self, view: RunView | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        if view is not None:
            for name, value in self.figures(view).items():
                self.set_reactive(getattr(RunHeader, name), value)  # no refresh before the first paint

    @staticmethod
    def figures(view: RunView) -> dict:
        return {"phase": view.state, "step": view.step, "max_steps": view.max_steps, "it_s": view.it_s,
                "eta": view.eta, "elapsed": view.elapsed, "lr": view.lr, "about": about_text(view),
                "gpu": view.gpu_line()}

    def show(self, view: RunView) -> None:
        """Take the view's figures; only those that changed repaint (one repaint per frame at most)."""
        for name, value in self.figures(view).items():
            setattr(self, name, value)

    def render(self) -> Text:
        # (text, style, dropped first where the line does not fit: higher first; 0 = always shown)
        parts = [(f"● {self.phase}", STATE_STYLES.get(self.phase, "bold"), 0),
                 (f"  step {self.step}/{self.max_steps or '?'}", "bold", 0)]
        if self.max_steps:
            parts.append((f" {100 * self.step / self.max_steps:.0f}%", "", 0))
        parts += [(f"  {format_rate(self.it_s)}", "", 1), (f"  ETA {format_duration(self.eta)}", "", 0),
                  (f"  elapsed {format_duration(self.elapsed)}", "", 2)]
        if self.lr is not None:
            parts.append((f"  lr {self.lr:.3g}", "", 3))
        width = self.content_size.width or 200
        while sum(len(p[0]) for p in parts) > width and max(p[2] for p in parts):
            drop = max(p[2] for p in parts)
            parts = [p for p in parts if p[2] != drop]
        text = Text(no_wrap=True, overflow="ellipsis")
        for part, style, _ in parts:
            text.append(part, style)
        second = Text(self.about, style="dim")
        if self.gpu:
            second.append(f" · {self.gpu}", "bold magenta")
        joined = Text("\n").join([text, second])
        joined.no_wrap, joined.overflow = True, "ellipsis"
        return joined
