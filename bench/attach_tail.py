"""How long `attach` takes to reach the live tail of a long event log (target: 100k events in < 1 s).

Writes a synthetic events.jsonl shaped like a real run (step events with every field, a checkpoint every 500 steps),
then times what `tiwiz attach` does before it can show the live state: a Follower replaying the whole file plus the
loss history (the typed parse and the one reducer, core.runs.run_state). Also times `tiwiz runs`-style inspection of
the same folder.

    python bench/attach_tail.py [--events 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runs import api as runapi  # noqa: E402
from core.runs import folder as runs  # noqa: E402
from core.runs.run_state import RunState  # noqa: E402


def write_log(path: Path, n: int) -> int:
    t0 = 1.7e9
    lines = []
    for i in range(1, n + 1):
        lines.append(json.dumps({"type": "step", "time": round(t0 + i * 0.2, 3), "step": i, "max_steps": n,
                                 "epoch": i // 40, "loss": 0.1 + (i % 97) / 1000, "loss_avg": 0.123456789,
                                 "lr": 0.005, "it_s": 4.87654321, "elapsed": round(i * 0.2, 3)},
                                separators=(",", ":")))
        if i % 500 == 0:
            lines.append(json.dumps({"type": "checkpoint", "time": t0 + i * 0.2, "step": i,
                                     "pt": f"embeddings/x-{i}.pt", "safetensors": f"embeddings/x-{i}.safetensors"}))
    path.write_text("\n".join(lines) + "\n")
    return path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "bench-run"
        run.mkdir()
        size = write_log(run / runs.EVENTS, args.events)
        runs.write_status(run, {"pid": None, "state": "finished", "step": args.events, "max_steps": args.events})
        best_tail, best_inspect = float("inf"), float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            follower = runapi.follow(run)
            events = []
            while batch := follower.poll():
                events.extend(batch)
            history = RunState.fold(events).losses
            assert follower.caught_up() and len(history) == args.events
            best_tail = min(best_tail, time.perf_counter() - t0)
            t0 = time.perf_counter()
            info = runs.inspect_run(run)
            best_inspect = min(best_inspect, time.perf_counter() - t0)
            assert info.step == args.events
        print(f"attach_tail: {len(events)} events ({size / 1e6:.1f} MB) replayed to the live tail in "
              f"{best_tail * 1000:.0f} ms (best of {args.repeat}); target < 1000 ms")
        print(f"attach_tail: inspect_run (what `tiwiz runs` does per folder) {best_inspect * 1000:.1f} ms")
        print(f"attach_tail: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
