"""The monitor's header: state, step/max, it/s, ETA, elapsed, lr, and GPU memory/utilisation on CUDA."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.run_view import RunView, format_duration, format_rate

STATE_STYLES = {
    "running": "bold green", "stopping": "bold yellow", "stopped": "bold yellow", "finished": "bold cyan",
    "failed": "bold red", "starting": "dim", "killed": "bold red", "damaged": "bold red",
}


def header_text(view: RunView) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"● {view.state}", STATE_STYLES.get(view.state, "bold"))
    text.append(f"  step {view.step}/{view.max_steps or '?'}", "bold")
    if view.max_steps:
        text.append(f" {100 * view.step / view.max_steps:.0f}%")
    text.append(f"  {format_rate(view.it_s)}")
    text.append(f"  ETA {format_duration(view.eta)}")
    text.append(f"  elapsed {format_duration(view.elapsed)}")
    if view.lr is not None:
        text.append(f"  lr {view.lr:.3g}")
    second = Text(no_wrap=True, overflow="ellipsis", style="dim")
    second.append(view.name or view.run_dir.name)
    if view.device:
        second.append(f" · {view.device}{' ' + view.precision if view.precision else ''}")
    if view.n_images:
        second.append(f" · {view.n_images} images")
    if view.epoch is not None:
        second.append(f" · epoch {view.epoch}")
    gpu = view.gpu_line()
    if gpu:
        second.append(f" · {gpu}", "bold magenta")
    return Text("\n").join([text, second])


class RunHeader(Widget):
    DEFAULT_CSS = """
    RunHeader { height: 2; dock: top; background: $primary-background; padding: 0 1; }
    """

    def __init__(self, view: RunView, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view = view

    def render(self) -> Text:
        return header_text(self.view)
