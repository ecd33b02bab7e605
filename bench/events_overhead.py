"""What the run folder costs a training step: appending the step event to events.jsonl, keeping status.json current
and polling commands/ (target: < 2% of a tiny-model step on CPU).

1. Times a real tiny-model training step (64 px, CPU) with the Trainer in this process (median step interval).
2. Times exactly what the worker adds per step: WorkerSink.emit("step", ...) (JSON line + flush + the status tracker)
   plus CommandBox.take() (one scandir), averaged over many iterations.
3. Runs the trainer again through the worker's sink and command box, timing the time spent inside them (an A/B of
   two whole runs would drown a 0.1% effect in machine noise).

    python bench/events_overhead.py [--steps 40] [--iters 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def step_intervals(trainer_factory) -> list[float]:
    times = []
    trainer = trainer_factory(times)
    trainer.run()
    return [b - a for a, b in zip(times, times[1:])][3:]  # skip warm-up


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--iters", type=int, default=20000)
    args = parser.parse_args()

    import torch

    from core.runs import folder as runs
    from core.events import CallbackSink, TeeSink
    from core.models.builtin import write_random_demo_model
    from core.training.trainer import Trainer
    from core.runs.worker import StatusTracker, WorkerSink
    from train_helpers import make_images, tiny_config

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = write_random_demo_model(tmp / "model", seed=0)
        data = make_images(tmp / "data", n=4)

        def config(out):
            return tiny_config(model, data, steps=args.steps, output=str(out))

        def plain(times):
            sink = CallbackSink(lambda e: times.append(time.perf_counter()) if e["type"] == "step" else None)
            out = Path(tempfile.mkdtemp(dir=tmp))
            return Trainer(config(out), out, sink)

        spent = {"sink": [], "poll": []}

        class Timed:
            """Accumulates the time the worker's sink and command polling take inside a real training run."""

            def __init__(self, fn, key):
                self.fn, self.key = fn, key

            def __call__(self, *a, **kw):
                t = time.perf_counter()
                try:
                    return self.fn(*a, **kw)
                finally:
                    spent[self.key].append(time.perf_counter() - t)

        def with_run_folder(times):
            out = tmp / "worker"
            out.mkdir()
            worker_sink = WorkerSink(out, StatusTracker(out, resume=False))
            worker_sink.emit = Timed(worker_sink.emit, "sink")
            timer = CallbackSink(lambda e: times.append(time.perf_counter()) if e["type"] == "step" else None)
            return Trainer(config(out), out, TeeSink(timer, worker_sink), poll_commands=Timed(runs.CommandBox(out).take, "poll"))

        step_intervals(plain)  # warm-up (first-run allocations, caches)
        step_s = statistics.median(step_intervals(plain))

        run = tmp / "micro"
        run.mkdir()
        sink = WorkerSink(run, StatusTracker(run, resume=False))
        box = runs.CommandBox(run)
        fields = dict(max_steps=3000, epoch=12, loss=0.123456789, loss_avg=0.1333333, lr=0.005, it_s=4.5678,
                      elapsed=123.456)
        t0 = time.perf_counter()
        for i in range(args.iters):
            sink.emit("step", step=i, **fields)
            box.take()
        per_step = (time.perf_counter() - t0) / args.iters
        sink.close()

        t0 = time.perf_counter()
        in_run = step_intervals(with_run_folder)
        total = time.perf_counter() - t0
        n_steps = len(in_run) + 4

    print(f"events_overhead: tiny-model step (64 px, CPU, 1 thread) median {step_s * 1000:.1f} ms")
    print(f"events_overhead: event append + status + command poll {per_step * 1e6:.1f} us/step "
          f"= {100 * per_step / step_s:.3f}% of a step (target < 2%)")
    sink_med, poll_med = statistics.median(spent["sink"]), statistics.median(spent["poll"])
    in_run_med = statistics.median(in_run)
    print(f"events_overhead: inside a real {n_steps}-step run: median event+status {sink_med * 1e6:.1f} us, "
          f"median command poll {poll_med * 1e6:.1f} us, median step {in_run_med * 1000:.1f} ms "
          f"= {100 * (sink_med + poll_med) / in_run_med:.3f}% of a step")
    print(f"events_overhead: (mean, including the machine's preemptions and journal stalls: "
          f"{100 * (sum(spent['sink']) + sum(spent['poll'])) / total:.3f}% of the run's wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
