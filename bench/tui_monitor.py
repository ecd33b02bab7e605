"""The training monitor attached to a 100k-step run: time to first paint, and the worst UI-thread stall while it
follows a worker writing 20 events a second (target: stall <= 50 ms). Also the loss plot's draw time for 100k steps
(target <= 5 ms).

A separate process plays the worker (appends step events at 20/s, a checkpoint and a preview every 50 steps), as a
real run would. The app runs headless (Textual's test driver: it composes and renders every frame). A heartbeat task
on the UI event loop wakes every 5 ms; how late it wakes is the stall the user would feel (wall clock). On a loaded
machine the wall figure includes time the OS did not run the process at all, so the UI thread's own CPU time within
each gap is printed too: that is the work the monitor did on the UI thread, the stall on an idle machine.

    python bench/tui_monitor.py [--steps 100000] [--follow-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.atomic import atomic_write_json  # noqa: E402
from core.runs import run_events as ev  # noqa: E402

WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from core.runs import run_events as ev
path, start = sys.argv[1], int(sys.argv[2])
step = start
with open(path, "a", encoding="utf-8") as fh:
    t_next = time.monotonic()
    while True:
        step += 1
        lines = [ev.Step(step=step, max_steps=10**6, loss=0.1 + (step % 89) / 1000, loss_avg=0.12, lr=0.005,
                         it_s=20.0, elapsed=step / 20).to_line()]
        if step % 50 == 0:
            lines.append(ev.Checkpoint(step=step, pt=f"embeddings/b-{step}.pt",
                                       safetensors=f"embeddings/b-{step}.safetensors").to_line())
            lines.append(ev.Preview(step=step, path="previews/b.png").to_line())
        for line in lines:
            fh.write(line + "\n")
            fh.flush()
        t_next += 1 / 20
        time.sleep(max(0.0, t_next - time.monotonic()))
"""


def write_history(run: Path, steps: int) -> None:
    from PIL import Image

    run.mkdir(parents=True)
    (run / "previews").mkdir()
    Image.new("RGB", (64, 64), (120, 40, 200)).save(run / "previews" / "b.png")
    lines = [ev.Started(step=0, max_steps=10**6, name="bench", device="cuda", precision="bf16", n_images=20,
                        model="sd15").to_line()]
    for i in range(1, steps + 1):
        lines.append(ev.Step(step=i, max_steps=10**6, epoch=i // 20, loss=0.1 + (i % 97) / 1000, loss_avg=0.12,
                             lr=0.005, it_s=20.0, elapsed=i / 20).to_line())
        if i % 500 == 0:
            lines.append(ev.Validation(step=i, val_loss=0.11).to_line())
            lines.append(ev.Checkpoint(step=i, pt=f"embeddings/b-{i}.pt", safetensors=f"embeddings/b-{i}.st").to_line())
            lines.append(ev.Preview(step=i, path="previews/b.png").to_line())
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    atomic_write_json(run / "status.json", {"pid": None, "state": "running", "step": steps, "max_steps": 10**6})


async def measure(run: Path, steps: int, follow_s: float) -> dict:
    from tui.app import TiwizApp
    from tui.state import WizardState

    result: dict = {}
    t0 = time.perf_counter()
    app = TiwizApp(state=WizardState(run_dir=str(run)), save=False, runs_root=str(run.parent),
                   start_stage="monitor")
    app.check_liveness = False
    stalls: list[float] = []
    phase = {"name": "load"}
    worst = {"load": 0.0, "follow": 0.0}
    worst_cpu = {"load": 0.0, "follow": 0.0}

    async def heartbeat() -> None:
        period = 0.005
        while True:
            before, cpu_before = time.perf_counter(), time.thread_time()
            await asyncio.sleep(period)
            late = time.perf_counter() - before - period
            busy = time.thread_time() - cpu_before
            worst[phase["name"]] = max(worst[phase["name"]], late)
            worst_cpu[phase["name"]] = max(worst_cpu[phase["name"]], busy)
            if phase["name"] == "follow":
                stalls.append(late)

    async with app.run_test(size=(120, 40)) as pilot:
        beat = asyncio.create_task(heartbeat())
        monitor = app.screen
        while not (monitor.loaded and monitor.shown_version == monitor.view.version and len(monitor.view.losses)
                   >= steps):
            await asyncio.sleep(0.001)
        await pilot.pause()
        result["first_paint_s"] = time.perf_counter() - t0
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run / "events.jsonl"), str(steps), str(ROOT)])
        try:
            phase["name"] = "follow"
            start_step = monitor.view.step
            await asyncio.sleep(follow_s)
            result["followed_steps"] = monitor.view.step - start_step
        finally:
            writer.kill()
            writer.wait()
        beat.cancel()
    stalls.sort()
    result["worst_cpu_load_ms"] = worst_cpu["load"] * 1000
    result["worst_cpu_follow_ms"] = worst_cpu["follow"] * 1000
    result["worst_stall_load_ms"] = worst["load"] * 1000
    result["worst_stall_follow_ms"] = worst["follow"] * 1000
    result["p99_stall_follow_ms"] = stalls[int(len(stalls) * 0.99)] * 1000 if stalls else 0.0
    return result


def plot_draw_ms(steps: int) -> tuple[float, float]:
    from tui.widgets.loss_plot import Series, render_plot

    raw = [(i, 0.1 + (i % 97) / 1000) for i in range(1, steps + 1)]
    series = Series()
    series.sync(raw)
    times = {}
    for size in ((80, 16), (160, 40)):
        best = float("inf")
        for _ in range(20):
            t = time.perf_counter()
            render_plot(series, series, [], *size)
            best = min(best, time.perf_counter() - t)
        times[size] = best * 1000
    return times[(80, 16)], times[(160, 40)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--follow-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "bench-20250101-000000"
        write_history(run, args.steps)
        size_mb = (run / "events.jsonl").stat().st_size / 1e6
        result = asyncio.run(measure(run, args.steps, args.follow_s))
    small, big = plot_draw_ms(args.steps)
    load = os.getloadavg()
    print(f"tui_monitor: {args.steps} steps ({size_mb:.1f} MB events.jsonl), load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"tui_monitor: time to first paint (history folded in a worker, plot drawn) {result['first_paint_s']:.2f} s")
    print(f"tui_monitor: worst UI-thread stall while loading the history {result['worst_stall_load_ms']:.1f} ms wall, "
          f"{result['worst_cpu_load_ms']:.1f} ms of UI-thread CPU")
    print(f"tui_monitor: following a worker writing 20 events/s for {args.follow_s:.0f} s "
          f"({result['followed_steps']} steps shown): worst UI-thread stall {result['worst_stall_follow_ms']:.1f} ms, "
          f"p99 {result['p99_stall_follow_ms']:.1f} ms wall; worst UI-thread CPU in one gap "
          f"{result['worst_cpu_follow_ms']:.1f} ms; target <= 50 ms")
    print(f"tui_monitor: loss plot draw for {args.steps} steps: {small:.2f} ms at 80x16, {big:.2f} ms at 160x40; "
          "target <= 5 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
