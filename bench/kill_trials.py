"""Kill trials: kill -9 a real detached training worker, resume it, and check that nothing was lost.

    python bench/kill_trials.py                 # 40 trials: 32 at random times after the first checkpoint,
                                                # 2 aimed at each kind of write (embedding, state, status, final)
    python bench/kill_trials.py --random 1 --aimed 1   # the short form CI runs (tests/test_kill_trials.py)

A random trial starts a worker (tiny model, 64 px, CPU), waits for its first checkpoint, sleeps a random time and
kill -9s it. An aimed trial runs the worker with `os.replace` wrapped so that the process kill -9s itself in the
middle of its Nth atomic write of one kind, after the temp file is written and before it is renamed: the embedding
checkpoint (embeddings/NAME-STEP.*), the resume state (state/latest.pt), status.json, or the final NAME.pt /
NAME.safetensors. Then each trial checks every file is whole (no torn file), resumes with `tiwiz resume`'s code
path until the run finishes, and compares the final embedding with an uninterrupted run's, bit for bit.

Reported: resumed, finished and bit-identical counts, steps lost per kill (steps done after the last checkpoint),
torn files, and temp files left behind after the resumed run finished (target: none). The load average is printed
with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("embedding", "state", "status", "final")
STEPS, SAVE_EVERY = 12, 3
SAFETY_S = 300.0


@dataclass
class Trial:
    kind: str  # "random" or one of KINDS
    target: str = ""  # what was hit: "after step N" / "write #N of KIND"
    killed_at_step: int | None = None
    last_checkpoint: int | None = None
    state_after_kill: str = ""
    steps_lost: int | None = None
    torn: list[str] = field(default_factory=list)
    temps_after_kill: int = 0
    resumed: bool = False
    resumes: int = 0
    finished: bool = False
    identical: bool = False
    temps_left: list[str] = field(default_factory=list)
    note: str = ""


# ---- the worker with a kill aimed at one kind of write --------------------------------------------------------
def write_kind(run_dir: Path, dest: Path) -> str | None:
    if dest.name == "status.json" and dest.parent == run_dir:
        return "status"
    if dest.parent.name == "embeddings":
        return "embedding"
    if dest.parent.name == "state":
        return "state"
    if dest.parent == run_dir and dest.suffix in (".pt", ".safetensors"):
        return "final"
    return None


def aimed_worker(run_dir: str, kind: str, nth: int) -> int:
    """Run core.runs.worker in this process, kill -9 ourselves in the middle of the nth write of `kind`."""
    run = Path(run_dir).resolve()
    original = os.replace
    count = {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if write_kind(run, Path(os.fsdecode(dst))) == kind:
            count["n"] += 1
            if count["n"] == nth:  # the temp file is complete, the rename has not happened: a kill right here
                os.kill(os.getpid(), signal.SIGKILL)
        return original(src, dst, *args, **kwargs)

    os.replace = replace
    from core.runs import worker

    return worker.main([str(run)])


# ---- helpers ------------------------------------------------------------------------------------------------------
def load_vectors(path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return next(iter(tensors.values()))


def torn_files(run: Path) -> list[str]:
    """Files that exist but cannot be read whole."""
    import torch
    from safetensors.torch import load_file

    from core.runs import folder as runs

    bad = []
    for path in sorted(run.glob("embeddings/*.safetensors")) + sorted(run.glob("*.safetensors")):
        try:
            load_file(str(path))
        except Exception:  # noqa: BLE001
            bad.append(str(path.relative_to(run)))
    for path in sorted(run.glob("embeddings/*.pt")) + sorted(run.glob("*.pt")) + [run / "state" / "latest.pt"]:
        if path.exists():
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001
                bad.append(str(path.relative_to(run)))
    try:
        runs.read_status(run)
    except Exception:  # noqa: BLE001
        bad.append("status.json")
    return bad


def temp_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp"))


def wait_done(run: Path):
    from core.runs import folder as runs

    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        info = runs.inspect_run(run)
        if not info.alive:
            return info
        time.sleep(0.05)
    raise RuntimeError(f"{run} still running after {SAFETY_S:.0f} s")


def kill_worker(run: Path) -> None:
    from core.runs import folder as runs

    pids = {(runs.read_status(run) or {}).get("pid") or 0}
    try:
        pids.add(int((run / runs.LOCK).read_text().strip() or 0))
    except (OSError, ValueError):
        pass
    for pid in pids - {0}:
        if runs.pid_is_worker(pid, run):
            os.kill(pid, signal.SIGKILL)


def config_for(model: Path, data: Path, out: Path, seed: int):
    from core.training.config import TrainConfig

    return TrainConfig.from_dict(dict(model=str(model), data=str(data), name="kt", steps=STEPS, width=64, height=64,
                                      save_every=SAVE_EVERY, preview_every=0, validate_every=0, lr="0.02:6, 0.005",
                                      seed=seed, device="cpu", output=str(out)))


def start_aimed(config, kind: str, nth: int) -> Path:
    from core.runs import api
    from core.runs import folder as runs

    config = api.prepare_run(config)
    run = Path(config.output)
    runs.write_status(run, {"pid": None, "state": "starting", "name": config.name, "step": 0,
                            "max_steps": config.steps, "last_checkpoint": None, "last_loss": None, "resumed": False,
                            "reason": ""})
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    # "core.runs.worker" and the folder in the command line: what the liveness check looks for.
    cmd = [sys.executable, str(Path(__file__).resolve()), "--as", "core.runs.worker", str(run), kind, str(nth)]
    with open(run / runs.LOG, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=run, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    status = runs.read_status(run) or {}
    if status.get("state") == "starting" and status.get("pid") is None:
        runs.write_status(run, {**status, "pid": proc.pid})
    proc.wait(timeout=SAFETY_S)
    return run


def aimed_nth(kind: str, rng: random.Random) -> int:
    checkpoints = STEPS // SAVE_EVERY  # the last one is written just before the final files
    if kind == "embedding":
        return rng.randint(1, 2 * checkpoints)  # .pt and .safetensors of each checkpoint
    if kind == "state":
        return rng.randint(1, checkpoints)
    if kind == "status":
        return rng.randint(2, 12)
    return rng.randint(1, 2)  # NAME.pt or NAME.safetensors


def run_trial(kind: str, index: int, work: Path, model: Path, data: Path, reference, rng: random.Random,
              seed: int) -> Trial:
    from core.runs import api
    from core.runs import folder as runs

    trial = Trial(kind)
    out = work / f"{kind}-{index}"
    config = config_for(model, data, out, seed)
    if kind == "random":
        run = api.start_run(config)
        follower = api.follow(run)
        deadline = time.monotonic() + SAFETY_S
        while time.monotonic() < deadline and not any(e.get("type") == "checkpoint" for e in follower.poll()):
            if not runs.inspect_run(run).alive and follower.caught_up():
                break
            time.sleep(0.02)
        delay = rng.uniform(0.0, 2.5)
        time.sleep(delay)
        trial.target = f"{delay:.2f} s after the first checkpoint"
        kill_worker(run)
    else:
        nth = aimed_nth(kind, rng)
        trial.target = f"write #{nth} of {kind}"
        run = start_aimed(config, kind, nth)
    info = wait_done(run)
    trial.state_after_kill = str(info.state)
    trial.killed_at_step, trial.last_checkpoint = info.step, info.last_checkpoint
    trial.steps_lost = max(0, (info.step or 0) - (info.last_checkpoint or 0))
    trial.torn = torn_files(run)
    trial.temps_after_kill = len(temp_files(run))
    for _ in range(3):  # a resume that ends at once (e.g. one that only writes the final files) is still one
        if (run / "kt.safetensors").is_file() and runs.inspect_run(run).state == "finished":
            break
        try:
            api.resume_run(run)
        except Exception as exc:  # noqa: BLE001 - recorded: a resume that is refused is a failed trial
            if runs.inspect_run(run).state != "finished":  # refused because complete: the run says finished now
                trial.note = f"resume refused: {exc}"
            break
        trial.resumes += 1
        info = wait_done(run)
    trial.resumed = trial.resumes > 0 or trial.state_after_kill == "finished"
    final = runs.inspect_run(run)
    trial.finished = final.state == "finished" and (run / "kt.safetensors").is_file()
    if trial.finished:
        import torch

        trial.identical = torch.equal(load_vectors(run / "kt.safetensors"), reference)
    elif not trial.note:
        trial.note = f"ended {final.state}: {final.reason}"
    trial.temps_left = temp_files(run)
    return trial


def prepare(work: Path) -> tuple[Path, Path]:
    from PIL import Image
    import numpy as np

    from core.models.builtin import write_random_demo_model

    model = write_random_demo_model(work / "model", seed=0)
    data = work / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.BICUBIC).save(data / f"{i:03d}.png")
        (data / f"{i:03d}.txt").write_text(f"thing {i}, red")
    return model, data


def run_trials(n_random: int, n_aimed: int, work: Path, seed: int = 0, log=None) -> list[Trial]:
    """`n_random` random kills plus `n_aimed` kills aimed at each kind of write. Returns one Trial each."""
    from core.runs import api

    model, data = prepare(work)
    reference_run = api.start_run(config_for(model, data, work / "reference", seed))
    info = wait_done(reference_run)
    if info.state != "finished":
        raise RuntimeError(f"the uninterrupted reference run ended {info.state}: {info.reason}")
    reference = load_vectors(reference_run / "kt.safetensors")
    rng = random.Random(seed)
    plan = ["random"] * n_random + [k for _ in range(n_aimed) for k in KINDS]
    trials = []
    for i, kind in enumerate(plan):
        trial = run_trial(kind, i, work, model, data, reference, rng, seed)
        trials.append(trial)
        if log:
            log(f"{i + 1:3d}/{len(plan)} {kind:9s} {trial.target:32s} -> {trial.state_after_kill:8s} "
                f"step {trial.killed_at_step} ckpt {trial.last_checkpoint} lost {trial.steps_lost} "
                f"resumes {trial.resumes} finished {trial.finished} identical {trial.identical}"
                + (f" torn {trial.torn}" if trial.torn else "") + (f" temps {trial.temps_left}" if trial.temps_left
                                                                   else "") + (f" ({trial.note})" if trial.note else ""))
    return trials


def summary(trials: list[Trial]) -> dict:
    lost = [t.steps_lost for t in trials if t.steps_lost is not None]
    return {
        "trials": len(trials),
        "resumed": sum(t.resumed for t in trials),
        "finished": sum(t.finished for t in trials),
        "bit_identical": sum(t.identical for t in trials),
        "torn_files": sum(len(t.torn) for t in trials),
        "temp_files_left": sum(len(t.temps_left) for t in trials),
        "steps_lost_max": max(lost) if lost else None,
        "steps_lost_mean": round(sum(lost) / len(lost), 2) if lost else None,
        "by_kind": {k: sum(1 for t in trials if t.kind == k) for k in ("random", *KINDS)},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--as", "core.runs.worker"]:
        return aimed_worker(argv[2], argv[3], int(argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", type=int, default=32, help="kills at random times (default 32)")
    parser.add_argument("--aimed", type=int, default=2, help="kills aimed at each kind of write (default 2 each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the summary and every trial as JSON")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiwiz-kill-trials-") as tmp:
        trials = run_trials(args.random, args.aimed, Path(tmp), seed=args.seed,
                            log=None if args.json else (lambda line: print(line, flush=True)))
    result = summary(trials)
    result.update(seconds=round(time.monotonic() - t0, 1), load_average_before=[round(x, 2) for x in load_before],
                  load_average_after=[round(x, 2) for x in os.getloadavg()])
    if args.json:
        print(json.dumps({"summary": result, "trials": [asdict(t) for t in trials]}, indent=1))
    else:
        print(json.dumps(result, indent=1))
    ok = result["finished"] == result["bit_identical"] == len(trials) and not result["torn_files"] \
        and not result["temp_files_left"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
