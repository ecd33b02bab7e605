"""The monitor's widgets are driven by reactives: assigning the header's figures, the plot's points or the preview's
path is all a screen does, and the display follows (in a real app, through Textual's refresh)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.app import App, ComposeResult

from core.runs import run_events as ev
from tests.tui_support import gradient_png, wait_idle
from tui.run_view import RunView
from tui.widgets.image_preview import ImagePreview
from tui.widgets.loss_plot import LossPlot, Series
from tui.widgets.run_header import RunHeader


class Host(App):
    def __init__(self, view: RunView) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        yield RunHeader(self.view)
        yield LossPlot()
        yield ImagePreview(placeholder="nothing yet")


def shown(widget) -> str:
    return "\n".join(widget.render_line(y).text for y in range(widget.size.height))


def test_header_and_plot_follow_what_they_are_given(tmp_path):
    view = RunView(tmp_path / "cat-run")
    view.apply_all([ev.Started(step=0, max_steps=100, name="cat", device="cpu", n_images=3)])
    app = Host(view)

    async def drive():
        async with app.run_test(size=(100, 20)) as pilot:
            header, plot = app.query_one(RunHeader), app.query_one(LossPlot)
            await pilot.pause()
            assert "step 0/100" in shown(header) and "cat · cpu · 3 images" in shown(header)
            assert "waiting for the first step" in shown(plot)
            view.apply_all([ev.Step(step=i, max_steps=100, loss=1 / i, loss_avg=1 / i, lr=0.005, it_s=2.0,
                                    elapsed=i / 2) for i in range(1, 41)])
            header.show(view)
            plot.points = (view.losses, view.smoothed, view.val_losses)
            await pilot.pause()
            assert "step 40/100 40%" in shown(header) and "lr 0.005" in shown(header)
            assert "· loss 0.0250" in shown(plot) and "step 40" in shown(plot)
            view.apply_all([ev.Step(step=41, max_steps=100, loss=0.5, loss_avg=0.1, it_s=2.0, elapsed=20.5)])
            plot.points = (view.losses, view.smoothed, view.val_losses)  # the same lists, grown in place
            await pilot.pause()
            assert len(plot.raw) == 41 and "· loss 0.5000" in shown(plot) and "step 41" in shown(plot)
            filled = (Series(), Series(), Series())
            filled[0].sync([(1, 2.0), (2, 3.0)])
            plot.points = filled  # Series filled in a worker are taken as they are
            await pilot.pause()
            assert plot.raw is filled[0] and "· loss 3.0000" in shown(plot)
            plot.empty_text = "no steps: the run failed"
            plot.points = ([], [], [])
            await pilot.pause()
            assert "no steps: the run failed" in shown(plot)
    asyncio.run(drive())


def test_preview_reloads_a_file_read_while_it_was_being_written(tmp_path):
    good = gradient_png(tmp_path / "good.png", 1)
    preview_file = tmp_path / "preview.png"
    preview_file.write_bytes(good.read_bytes()[:40])  # the worker is still writing it
    app = Host(RunView(tmp_path))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            preview = app.query_one(ImagePreview)
            assert "nothing yet" in shown(preview)
            preview.path = str(preview_file)
            await wait_idle(pilot)
            assert isinstance(preview.path, Path) and preview.thumb is None
            assert "cannot show preview.png" in shown(preview)
            preview_file.write_bytes(good.read_bytes())
            preview.path = preview_file  # the same path again: not shown yet, so read again
            await wait_idle(pilot)
            assert preview.thumb is not None and not preview.error and "▀" in shown(preview)
            thumb = preview.thumb
            preview.path = preview_file  # shown: nothing is read again
            await wait_idle(pilot)
            assert preview.thumb is thumb
            preview.path = None
            await pilot.pause()
            assert preview.thumb is None and "nothing yet" in shown(preview)
    asyncio.run(drive())
