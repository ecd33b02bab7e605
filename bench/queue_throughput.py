"""Queue throughput: the same 8 tiny jobs run one after another (each a detached worker, started when the previous
one ended), then through the queue with 2 slots. Prints embeddings per hour for both and the scheduler's own
overhead per job: its CPU time, and the wait between a slot freeing and the next worker's spawn (target < 1 s).

    OMP_NUM_THREADS=1 python bench/queue_throughput.py [--jobs 8] [--steps 20] [--slots 2]

The scheduler runs in this process (the same `Scheduler` loop `tiwiz queue run` detaches), so its CPU time is
measured apart from the workers'. Record the load average printed with the figures: on a shared machine the
workers' start-up (importing torch) dominates and varies with load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, n: int = 2, size: int = 64) -> Path:
    from bench.train_speed import make_images as _make

    return _make(folder, n, size)


def settings(model: Path, data: Path, name: str, steps: int, seed: int) -> dict:
    return dict(model=str(model), data=str(data), name=name, steps=steps, width=64, height=64, save_every=steps,
                preview_every=0, validate_every=0, lr="0.01", device="cpu", seed=seed)


def wait_done(run_dir: Path) -> None:
    from core.runs import folder as runs

    while runs.inspect_run(run_dir).alive:
        time.sleep(0.05)


def end_time(run_dir: Path) -> float:
    from core.runs import folder as runs

    return float((runs.read_status(run_dir) or {}).get("updated") or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from core.models.builtin import write_random_demo_model
    from core.queue.jobs import add_jobs, list_jobs
    from core.queue.scheduler import LocalBackend, Scheduler
    from core.runs import api as runapi

    work = Path(tempfile.mkdtemp(prefix="queue-bench-"))
    model = write_random_demo_model(work / "model", seed=0)
    data = make_images(work / "data")
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"{os.cpu_count()} CPUs; {args.jobs} jobs of {args.steps} steps at 64 px on the tiny model", flush=True)

    # One after another: what a shell loop around `tiwiz train` does.
    t0 = time.monotonic()
    for i in range(args.jobs):
        run = runapi.start_run(settings(model, data, f"seq{i}", args.steps, i), root=work / "seq")
        wait_done(run)
    sequential = time.monotonic() - t0
    print(f"sequential: {sequential:.1f} s, {args.jobs / sequential * 3600:.0f} embeddings/hour", flush=True)

    queue = work / "runs" / "queue"
    add_jobs(queue, [(f"q{i}", settings(model, data, f"q{i}", args.steps, i), f"q{i}") for i in range(args.jobs)])
    scheduler = Scheduler(queue, LocalBackend(gpus=None, slots=args.slots), retries=0)
    t0, cpu0 = time.monotonic(), time.process_time()
    scheduler.run()
    queued = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    jobs = list_jobs(queue)
    assert all(j.state == "finished" for j in jobs), [(j.name, j.state, j.reason) for j in jobs]
    # The wait for each slot: a job launched after the first wave waited from the moment a run ended (freeing a
    # slot) to its own launch.
    launches = sorted(j.lives[0]["time"] for j in jobs)
    ends = sorted(end_time(Path(j.run_dir)) for j in jobs)
    waits = [launch - ends[k] for k, launch in enumerate(launches[args.slots:])]
    load_after = os.getloadavg()
    print(f"queue with {args.slots} slots: {queued:.1f} s, {args.jobs / queued * 3600:.0f} embeddings/hour "
          f"({sequential / queued:.2f}x the sequential rate)")
    print(f"scheduler overhead per job: {cpu / args.jobs * 1000:.0f} ms CPU; slot freed -> next worker spawned: "
          f"median {statistics.median(waits) * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms (target < 1 s)")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
