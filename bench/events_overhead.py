"""What the run folder costs a training step: appending the step event to events.jsonl, keeping status.json current
and polling commands/ (target: < 2% of a tiny-model step on CPU).

1. Times a real tiny-model training step (64 px, CPU) with the Trainer in this process (median step interval).
2. Times exactly what the worker adds per step: WorkerSink.emit("step", ...) (JSON line + flush + the status tracker)
   plus CommandBox.take() (one scandir), averaged over many iterations.
3. Runs the trainer again through the worker's sink and command box (an A/B; on a shared machine this is noisy, so
   the headline figure is 2 / 1).

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

    from core import runs
    from core.events import CallbackSink, TeeSink
    from core.models.demo import write_random_demo_model
    from core.trainer import Trainer
    from core.worker import StatusTracker, WorkerSink
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

        def with_run_folder(times):
            out = tmp / "worker"
            out.mkdir()
            worker_sink = WorkerSink(out, StatusTracker(out, resume=False))
            timer = CallbackSink(lambda e: times.append(time.perf_counter()) if e["type"] == "step" else None)
            return Trainer(config(out), out, TeeSink(worker_sink, timer), poll_commands=runs.CommandBox(out).take)

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

        ab = statistics.median(step_intervals(with_run_folder))

    print(f"events_overhead: tiny-model step (64 px, CPU, 1 thread) median {step_s * 1000:.1f} ms")
    print(f"events_overhead: event append + status + command poll {per_step * 1e6:.1f} us/step "
          f"= {100 * per_step / step_s:.3f}% of a step (target < 2%)")
    print(f"events_overhead: A/B median step with the worker's sink and command box {ab * 1000:.1f} ms "
          f"({100 * (ab - step_s) / step_s:+.1f}%, machine noise included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
