"""Time to a good embedding on the shipped world model's held-out concept (the demo's yellow heart).

Quality is the demo's colour-histogram distance ratio (learned / init; core.world.demo_job): images generated with a
checkpoint's vectors (8 fixed seeds, DDIM 25, CFG 4, 64 px) against the concept's images; below 0.5 counts as good.
For each training seed, three runs (same 16 concept images, 2 vectors initialised from "heart", CPU):

  (a) A1111's defaults as far as they apply: lr 0.005, plain MSE, batch 1, fixed steps (`--a-steps`, 400)
  (b) our defaults for this model (the demo's recipe): lr 0.002, velocity weighting, batch 4, 300 fixed steps
  (c) (b) with auto-stop (the DVAR rule, `auto_stop_window`/`auto_stop_threshold` defaults), at most `--c-steps`

Wall time is training time only: the Step events' `elapsed`, which includes the run's own validation passes but not
this script's checkpoint scoring, less the time spent writing checkpoints (the bench checkpoints every `--fine` steps
to score them; a real run does not). For each run: steps and seconds until the ratio first falls below 0.5, every run
scored every `--fine` (10) steps until then, so "steps to good" has the same resolution for all three, then every
`--every` steps ((a): twice that) to the end; the final ratio and the run's whole training time. For (c): the step
auto-stop chose and the checkpoint step with the best ratio. (c) is one run to `--c-steps` validating at the cadence a
real auto-stop run uses (`TrainConfig.effective_validate_every` with validate_every -1) with the rule advisory (it
saves a checkpoint where the rule fires; the rule and the validation never touch the training RNG, so up to that step
it is exactly the run that auto-stop would have ended there). `--sweep` validates (c) every 5 steps instead and
replays the rule on its curve at cadences 5, 10 and 20 with other windows and thresholds. `--ema DECAY` adds (d): (c)
with `ema_decay` (the vectors' moving average). (a) validates never (A1111 has no validation loss), (b) every 30 steps
(the demo's).

The final distances are compared with `--recheck` (32) seeds: the 8-seed ratio is exact for a given file but is one
sample of the images an embedding makes, and for (a)'s vectors, still moving at lr 0.005 and batch 1, a noisy one
(one checkpoint scored 0.74-0.96 on disjoint sets of 8 seeds, where a converged (c) file stays within 0.01; RESULTS.md).
The 8-seed finals stay in the output beside them. (a) is also scored every 10 steps over its last `--a-tail` steps, to
show how much its final ratio is one draw.

    python bench/time_to_quality.py                          # seeds 0,1,2
    python bench/time_to_quality.py --seeds 0,1,2,3,4 --ema 0.95 --save ttq.json
    python bench/time_to_quality.py --seeds 0 --sweep        # one seed, plus the window/threshold sweep
    python bench/time_to_quality.py --json                   # one JSON line per seed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import ttq_quality  # noqa: E402 (bench/ beside this file)

GOOD = 0.5
SWEEP_WINDOWS = (50, 100, 150, 200, 300)
SWEEP_THRESHOLDS = (0.1, 0.15, 0.2)


def _events(sink) -> list:
    from core.runs import run_events as ev

    return [e if isinstance(e, ev.RunEvent) else ev.parse(e) for e in sink.events]


def train(prep: dict, out: Path, seed: int, **overrides) -> dict:
    """One training run; returns its typed events and the (step -> training seconds) map.

    The seconds are the Step events' `elapsed` less the time spent writing checkpoints before that step: this bench
    checkpoints every `--fine` steps to score them, which a real run does not, and a save costs a batch-1 step of (a)
    relatively more than a batch-4 step of (c)."""
    from core.events import ListSink
    from core.runs import run_events as ev
    from core.training.config import TrainConfig
    from core.training import checkpoints
    from core.training.trainer import Trainer

    saves: list[tuple[int, float]] = []
    real_save = checkpoints.save

    def timed_save(s, final: bool = False):
        t0 = time.monotonic()
        try:
            return real_save(s, final)
        finally:
            saves.append((s.step, time.monotonic() - t0))

    cfg = dict(prep["config"], preview_every=0, seed=seed, output=str(out), holdout=0, threads=0)
    cfg.update(overrides)
    sink = ListSink()
    checkpoints.save = timed_save  # the trainer saves through the module
    try:
        summary = Trainer(TrainConfig.from_dict(cfg), out, sink).run()
    finally:
        checkpoints.save = real_save
    events = _events(sink)
    elapsed = {e.step: e.elapsed - sum(d for s, d in saves if s < e.step) for e in events if isinstance(e, ev.Step)}
    return {"summary": summary, "events": events, "elapsed": elapsed, "out": out, "config": cfg,
            "save_seconds": sum(d for s, d in saves if s <= summary.step and s)}


class Scorer:
    """The demo's colour-distance ratio of any checkpoint file, with one pipeline."""

    def __init__(self, prep: dict) -> None:
        from PIL import Image

        from core.world import demo_job, shapes

        self.demo = demo_job
        self.pipe = demo_job.load_pipeline(prep["model_dir"])
        self.refs = [Image.open(p).convert("RGB") for p in sorted(Path(prep["data_dir"]).glob("*.png"))]
        self.seeds = list(range(1000, 1008))
        from core.embeddings.vectors import init_vectors

        self.init = init_vectors(self.pipe.tokenizer, self.pipe.text_encoder, shapes.CONCEPT_INIT_TEXT, 2)
        self.before = self._distance(self.init)
        self._before = {len(self.seeds): self.before}

    def _distance(self, vectors, seeds=None) -> float:
        seeds = seeds or self.seeds
        images = self.demo.generate(self.pipe, ["<demo>"] * len(seeds), seeds, vectors=vectors)
        return self.demo.histogram_distance(images, self.refs)

    def ratio(self, path: Path, n_seeds: int = 0) -> float:
        """The ratio with the 8 fixed seeds, or with the first `n_seeds` of 1000, 1001, ... (the recheck)."""
        n = n_seeds or len(self.seeds)
        seeds = list(range(1000, 1000 + n))
        if n not in self._before:
            self._before[n] = self._distance(self.init, seeds)
        return self._distance(self.demo.load_vectors(path), seeds) / self._before[n]


def checkpoint_steps(run: dict) -> list[int]:
    """The steps with an embedding file: the checkpoints and the run's end."""
    from core.runs import run_events as ev

    steps = {e.step for e in run["events"] if isinstance(e, ev.Checkpoint) and e.safetensors}
    return sorted(steps | {run["summary"].step})


def score_run(run: dict, scorer: Scorer, keep=lambda step: True) -> dict[int, float]:
    """Ratio at every checkpoint of the run whose step `keep` accepts, and at its end (step -> ratio); cached per run,
    so scoring the same checkpoint twice costs nothing."""
    cache = run.setdefault("scores", {})
    for step in checkpoint_steps(run):
        if (keep(step) or step == run["summary"].step) and step not in cache:
            cache[step] = scorer.ratio(checkpoint_file(run, step))
    return {s: cache[s] for s in sorted(cache) if keep(s) or s == run["summary"].step}


def score_until_good(run: dict, scorer: Scorer, fine: int, every: int, extra=()) -> dict[int, float]:
    """Every `fine` steps until the ratio first falls below GOOD (so every run's "steps to good" has the same
    resolution), then every `every` steps and at `extra` steps (the rule's stop) for the rest of the run."""
    cache = run.setdefault("scores", {})
    good = False
    for step in checkpoint_steps(run):
        due = step % fine == 0 if not good else (step % every == 0 or step in extra)
        if due or step in extra or step == run["summary"].step:
            if step not in cache:
                cache[step] = scorer.ratio(checkpoint_file(run, step))
            good = good or cache[step] < GOOD
    return dict(sorted(cache.items()))


def first_good(ratios: dict[int, float], elapsed: dict[int, float]) -> tuple[int | None, float | None]:
    for step, r in ratios.items():
        if r < GOOD:
            return step, elapsed.get(step)
    return None, None


def replay(vals: list[tuple[int, float]], window: int, threshold: float) -> int | None:
    from core.training.autostop import AutoStop

    rule = AutoStop(window, threshold)
    for step, v in vals:
        if rule.update(step, v).stop:
            return step
    return None


def nearest_ratio(ratios: dict[int, float], step: int) -> tuple[int, float]:
    """The ratio at the last scored checkpoint at or before `step`."""
    best = max((s for s in ratios if s <= step), default=min(ratios))
    return best, ratios[best]


def checkpoint_file(run: dict, step: int) -> Path:
    """The embedding file of `step` (a checkpoint, or the run's final files)."""
    from core.runs import run_events as ev

    if step == run["summary"].step:
        return run["out"] / run["summary"].safetensors
    return run["out"] / next(e.safetensors for e in run["events"] if isinstance(e, ev.Checkpoint) and e.step == step)


def auto_stop_cadence(prep: dict) -> int:
    """The validation cadence a real auto-stop run of this recipe uses (validate_every -1: the product's choice)."""
    from core.training.config import TrainConfig

    return TrainConfig.from_dict(dict(prep["config"], auto_stop=True, validate_every=-1)).effective_validate_every()


def run_seed(workdir: Path, seed: int, every: int, sweep: bool, a_steps: int = 400, c_steps: int = 400,
             ema: float = 0.0, recheck: int = 0, a_tail: int = 100, fine: int = 10, b_steps: int = 300,
             norm_modes: tuple = (), clamp_k: float = 2.0) -> dict:
    from core.runs import run_events as ev
    from core.training.config import TrainConfig
    from core.world import demo_job

    prep = demo_job.prepare_demo(workdir, steps=300)
    scorer = Scorer(prep)
    defaults = TrainConfig()
    cadence = auto_stop_cadence(prep)
    result = {"seed": seed, "init_distance": scorer.before, "window": defaults.auto_stop_window,
              "threshold": defaults.auto_stop_threshold, "fine": fine, "every": every, "validate_every_c": cadence}

    # every run is checkpointed every `fine` steps (not timed: see train) and scored at that resolution until it first
    # gets good; (a) has no validation (A1111 has none); (b) validates like the demo (every 30 steps)
    a = train(prep, workdir / "a", seed, lr="0.005", loss_weighting="none", batch_size=1, steps=a_steps,
              save_every=fine, validate_every=0, ema_decay=0.0)
    b = train(prep, workdir / "b", seed, steps=b_steps, save_every=fine, validate_every=30)
    # (c): the same recipe validating at the product's auto-stop cadence, to c_steps with the rule advisory, so the
    # curve also serves the sweep; the rule saves a checkpoint where it fires, and training is identical to a run
    # that stopped there (the rule and the validation never touch the training RNG), so (c) is this run up to it.
    # --sweep validates every 5 steps instead, so the rule can be replayed at cadences 5, 10 and 20 on one curve.
    c_every = 5 if sweep else cadence
    c = train(prep, workdir / "c", seed, steps=c_steps, save_every=fine, validate_every=c_every)
    # no hold-out: the suggested best step is where the rule fired (basis "flat"; a rule that never fired leaves the
    # checkpoint with the lowest validation loss as the suggestion, basis "validation", which is no stop)
    fired = c["summary"].best_step if c["summary"].best_basis == "flat" else None
    runs = {"a": a, "b": b, "c": c}
    stops = {"c": fired}
    if ema:  # (d): (c) with the vectors' moving average (ema_decay), which also moves where the rule fires
        runs["d"] = d = train(prep, workdir / "d", seed, steps=c_steps, save_every=fine, validate_every=c_every,
                              ema_decay=ema)
        stops["d"] = d["summary"].best_step if d["summary"].best_basis == "flat" else None
    # issue 24: (c) under each other norm mode (bench/ttq_quality.py)
    extra_runs, extra_stops = ttq_quality.norm_runs(train, prep, workdir, seed, list(norm_modes), clamp_k, c_steps,
                                                    fine, c_every)
    runs.update(extra_runs)
    stops.update(extra_stops)
    for key, run in runs.items():
        grid = every * 2 if key == "a" else every
        stop = stops.get(key)
        ratios = score_until_good(run, scorer, fine, grid, extra=(stop,) if stop else ())
        end = stop or run["summary"].step
        ratios_to_end = {s: r for s, r in ratios.items() if s <= end}
        step, secs = first_good(ratios_to_end, run["elapsed"])
        result[key] = {"steps_to_good": step, "seconds_to_good": secs, "final_step": end,
                       "final_ratio": ratios[end], "seconds_total": run["elapsed"][end],
                       "best_ratio_step": min(ratios_to_end, key=ratios_to_end.get),
                       "best_ratio": min(ratios_to_end.values()), "ratios": ratios,
                       "save_seconds_excluded": run["save_seconds"]}
    result["c"]["auto_stop_step"] = fired
    for key in extra_runs:
        result[key]["auto_stop_step"] = stops[key]
    if ema:
        result["d"]["auto_stop_step"] = stops["d"]
        result["d"]["ema_decay"] = ema
    if a_tail:
        tail = score_run(a, scorer, keep=lambda step: step > a_steps - a_tail and step % fine == 0)
        values = sorted(tail.values())
        result["a"]["tail"] = {"from": a_steps - a_tail, "min": values[0], "median": values[len(values) // 2],
                               "max": values[-1], "n": len(values), "ratios": tail}
    if recheck:
        for key in result.keys() & ({"a", "c", "d"} | set(extra_runs)):
            result[key]["final_ratio_recheck"] = scorer.ratio(checkpoint_file(runs[key], result[key]["final_step"]),
                                                              recheck)
    result["c"]["best_ratio_step_whole"] = min(result["c"]["ratios"], key=result["c"]["ratios"].get)
    if norm_modes:  # the editability signal, the norms and the drift figures of every run
        ttq_quality.annotate(result, runs, ttq_quality.Editability(scorer), checkpoint_file, clamp_k)
    if sweep:
        vals = [(e.step, e.val_loss) for e in c["events"] if isinstance(e, ev.Validation)]
        c_ratios = result["c"]["ratios"]
        table = []
        for cad in (5, 10, 20):
            points = [(s, v) for s, v in vals if s % cad == 0]
            for window in SWEEP_WINDOWS:
                for threshold in SWEEP_THRESHOLDS:
                    stop = replay(points, window, threshold)
                    at = stop if stop is not None else c_steps
                    ck, ratio = nearest_ratio(c_ratios, at)
                    table.append({"validate_every": cad, "window": window, "threshold": threshold, "stop": stop,
                                  "ratio": ratio, "scored_at": ck, "seconds": c["elapsed"].get(at)})
        result["sweep"] = {"table": table, "best_ratio_step": min(c_ratios, key=c_ratios.get),
                           "best_ratio": min(c_ratios.values())}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--fine", type=int, default=10, help="checkpoint interval of every run, and the scoring interval "
                   "until a run first gets good (the resolution of 'steps to good', the same for every run)")
    p.add_argument("--every", type=int, default=50, help="scoring interval of runs (b) and (c) after they got good; "
                   "(a) every twice that")
    p.add_argument("--a-steps", type=int, default=400, help="(a)'s fixed steps (batch 1)")
    p.add_argument("--c-steps", type=int, default=400, help="(c)'s most steps")
    p.add_argument("--b-steps", type=int, default=300, help="(b)'s fixed steps (the demo's 300)")
    p.add_argument("--norm-modes", default="", metavar="MODES",
                   help="also run (c) under these norm modes (comma-separated: clamp,preserve; (c) itself is free) "
                        "and measure the editability signal, the final norms and whether the editability sees the "
                        "drift the validation loss does not (bench/ttq_quality.py)")
    p.add_argument("--clamp-k", type=float, default=2.0, metavar="K",
                   help="norm_clamp_k of the clamp run (default 2, the product's default)")
    p.add_argument("--sweep", action="store_true", help="also replay auto-stop windows/thresholds on (c)'s curve")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="also run (d): (c) with ema_decay DECAY (the vectors' moving average); 0 = no (d)")
    p.add_argument("--recheck", type=int, default=32, metavar="N",
                   help="re-score the final embeddings of (a), (c) and (d) with N seeds (0 = off): the 8-seed "
                        "ratio's own noise")
    p.add_argument("--a-tail", type=int, default=100, metavar="STEPS",
                   help="score (a) every 10 steps over its last STEPS steps (0 = off): how far its final ratio is "
                        "one draw of a moving target")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", metavar="FILE.json", help="also write every seed's result to FILE.json (after each seed)")
    args = p.parse_args(argv)

    from core.training.threads import ThreadChoice

    modes = tuple(m.strip() for m in args.norm_modes.split(",") if m.strip())
    bad = [m for m in modes if m not in ("free", "clamp", "preserve")]
    if bad:
        p.error(f"--norm-modes: {', '.join(bad)} is not a norm mode (free, clamp, preserve)")
    ThreadChoice(0).apply()  # scoring runs outside the trainer: the free cores for it too (OpenMP spinning)
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)", flush=True)
    rows = []
    t0 = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="tiwiz-ttq-") as tmp:
            r = run_seed(Path(tmp), seed, args.every, args.sweep, args.a_steps, args.c_steps, args.ema,
                         args.recheck, args.a_tail, args.fine, args.b_steps, modes, args.clamp_k)
        r["load_after"] = os.getloadavg()
        rows.append(r)
        if args.save:
            Path(args.save).write_text(json.dumps(rows, default=str, indent=1))
        if args.json:
            print(json.dumps(r, default=str), flush=True)
            continue
        print(f"\nseed {seed} (init distance {r['init_distance']:.3f}; load {os.getloadavg()[0]:.1f})", flush=True)
        labels = [("a", "A1111 defaults"), ("b", "our defaults"), ("c", "ours + auto-stop")]
        labels += [("d", f"(c) + ema {args.ema:g}")] if "d" in r else []
        labels += [(m, f"(c), norm {m}") for m in modes if m in r]
        for key, label in labels:
            x = r[key]
            good = (f"ratio < {GOOD} at step {x['steps_to_good']} after {x['seconds_to_good']:.1f} s"
                    if x["steps_to_good"] is not None else f"never below {GOOD}")
            print(f"  ({key}) {label:17s} {good}; ran {x['final_step']} steps in {x['seconds_total']:.1f} s, final "
                  f"ratio {x['final_ratio']:.2f}; best {x['best_ratio']:.2f} at step {x['best_ratio_step']}",
                  flush=True)
        c, a = r["c"], r["a"]
        a_time = a["seconds_to_good"] if a["seconds_to_good"] is not None else a["seconds_total"]
        to_good = (f"{c['seconds_to_good'] / a['seconds_to_good']:.2f}" if a["seconds_to_good"] and
                   c["seconds_to_good"] is not None else "n/a ((a) never got good)")
        print(f"  auto-stop chose step {c['auto_stop_step']}; best-ratio checkpoint step {c['best_ratio_step_whole']} "
              f"(of the whole (c) curve); time to good (c)/(a) = {to_good}; "
              f"(c) whole run / (a) to good = {c['seconds_total'] / a_time:.2f}"
              + ("" if a["seconds_to_good"] is not None else " ((a) never got good: its whole run)"), flush=True)
        if "d" in r:
            print(f"  (d) auto-stop chose step {r['d']['auto_stop_step']}; best-ratio checkpoint step "
                  f"{min(r['d']['ratios'], key=r['d']['ratios'].get)}", flush=True)
        if "tail" in a:
            t = a["tail"]
            print(f"  (a) over steps {t['from'] + 10}-{a['final_step']} every 10: ratio min {t['min']:.2f}, median "
                  f"{t['median']:.2f}, max {t['max']:.2f}", flush=True)
        if "final_ratio_recheck" in a:
            print(f"  final ratios re-scored with {args.recheck} seeds: " + ", ".join(
                f"({k}) {r[k]['final_ratio_recheck']:.2f}" for k in ("a", "c", "d", *modes)
                if "final_ratio_recheck" in r.get(k, {})), flush=True)
        if "sweep" in r:
            sw = r["sweep"]
            print(f"  sweep on the (c) curve (best ratio {sw['best_ratio']:.2f} at step {sw['best_ratio_step']}):")
            for row in sw["table"]:
                stop = row["stop"] if row["stop"] is not None else "none"
                print(f"    validate every {row['validate_every']:2d}, window {row['window']:3d} threshold "
                      f"{row['threshold']:.2f}: stop {stop}, ratio {row['ratio']:.2f}")
        ttq_quality.print_seed(r, [key for key, _ in labels])
    if modes and not args.json:
        ttq_quality.print_summary(rows, list(modes))
    if len(rows) > 1 and not args.json:
        print("\nall seeds:")
        for key in [k for k in ("c", "d") if k in rows[0]]:
            to_good = [f"seed {r['seed']}: " + (f"{r[key]['seconds_to_good'] / r['a']['seconds_to_good']:.2f}"
                                               if r["a"]["seconds_to_good"] and r[key]["seconds_to_good"] is not None
                                               else "n/a") for r in rows]
            # the final distances are compared with the recheck seeds where there are any: the 8-seed score of (a)'s
            # still-moving vectors is one noisy draw (bench/RESULTS.md), the recheck is the verdict
            primary = "final_ratio_recheck" if "final_ratio_recheck" in rows[0][key] else "final_ratio"
            worse = [r["seed"] for r in rows if r[key][primary] > r["a"][primary]]
            worse8 = [r["seed"] for r in rows if r[key]["final_ratio"] > r["a"]["final_ratio"]]
            n = args.recheck if primary == "final_ratio_recheck" else 8
            print(f"  time to good ({key})/(a) at {args.fine}-step resolution: {', '.join(to_good)}; seeds where "
                  f"({key}) ends worse than (a), {n} seeds: {worse or 'none'} (8 seeds: {worse8 or 'none'})",
                  flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s; load average at end: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
