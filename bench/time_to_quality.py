"""Time to a good embedding on the shipped world model's held-out concept (the demo's yellow heart).

Quality is the demo's colour-histogram distance ratio (learned / init; core.world.demo_job): images generated with a
checkpoint's vectors (8 fixed seeds, DDIM 25, CFG 4, 64 px) against the concept's images; below 0.5 counts as good.
For each training seed, three runs (same 16 concept images, 2 vectors initialised from "heart", CPU):

  (a) A1111's defaults as far as they apply: lr 0.005, plain MSE, batch 1, fixed steps (`--a-steps`, 400)
  (b) our defaults for this model (the demo's recipe): lr 0.002, velocity weighting, batch 4, 300 fixed steps
  (c) (b) with auto-stop (the DVAR rule, `auto_stop_window`/`auto_stop_threshold` defaults), at most `--c-steps`

Wall time is training time only (the Step events' `elapsed`, which includes the run's own validation passes but not
this script's checkpoint scoring). For each run: steps and seconds until the ratio first falls below 0.5 (at the
checkpoints, every `--every` steps), the final ratio and the run's whole training time. For (c): the step auto-stop
chose and the checkpoint step with the best ratio. (c) is one run to `--c-steps` validating every 5 steps with the
rule advisory (it saves a checkpoint where the rule fires; the rule and the validation never touch the training RNG,
so up to that step it is exactly the run that auto-stop would have ended there), and `--sweep` replays the rule with
other windows and thresholds on its curve. `--ema DECAY` adds (d): (c) with `ema_decay` (the vectors' moving average).

The 8-seed ratio is exact for a given file but is one sample of the images an embedding makes: the final files of
(a), (c) and (d) are re-scored with `--recheck` seeds (32), and (a), still moving at lr 0.005 and batch 1, is scored
every 10 steps over its last `--a-tail` steps, to show how much its final ratio is one draw.

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

GOOD = 0.5
SWEEP_WINDOWS = (50, 100, 150, 200, 300)
SWEEP_THRESHOLDS = (0.1, 0.15, 0.2)


def _events(sink) -> list:
    from core.runs import run_events as ev

    return [e if isinstance(e, ev.RunEvent) else ev.parse(e) for e in sink.events]


def train(prep: dict, out: Path, seed: int, **overrides) -> dict:
    """One training run; returns its typed events and the (step -> elapsed seconds) map."""
    from core.events import ListSink
    from core.runs import run_events as ev
    from core.training.config import TrainConfig
    from core.training.trainer import Trainer

    cfg = dict(prep["config"], preview_every=0, seed=seed, output=str(out), holdout=0, threads=0)
    cfg.update(overrides)
    sink = ListSink()
    summary = Trainer(TrainConfig.from_dict(cfg), out, sink).run()
    events = _events(sink)
    elapsed = {e.step: e.elapsed for e in events if isinstance(e, ev.Step)}
    return {"summary": summary, "events": events, "elapsed": elapsed, "out": out, "config": cfg}


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


def score_run(run: dict, scorer: Scorer, keep=lambda step: True) -> dict[int, float]:
    """Ratio at every checkpoint of the run whose step `keep` accepts, and at its end (step -> ratio)."""
    from core.runs import run_events as ev

    out = {}
    for e in run["events"]:
        if isinstance(e, ev.Checkpoint) and e.safetensors and keep(e.step):
            out[e.step] = scorer.ratio(run["out"] / e.safetensors)
    final = run["summary"]
    out.setdefault(final["step"], scorer.ratio(run["out"] / final["safetensors"]))
    return dict(sorted(out.items()))


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

    if step == run["summary"]["step"]:
        return run["out"] / run["summary"]["safetensors"]
    return run["out"] / next(e.safetensors for e in run["events"] if isinstance(e, ev.Checkpoint) and e.step == step)


def run_seed(workdir: Path, seed: int, every: int, sweep: bool, a_steps: int = 400, c_steps: int = 400,
             ema: float = 0.0, recheck: int = 0, a_tail: int = 100) -> dict:
    from core.runs import run_events as ev
    from core.training.config import TrainConfig
    from core.world import demo_job

    prep = demo_job.prepare_demo(workdir, steps=300)
    scorer = Scorer(prep)
    defaults = TrainConfig()
    result = {"seed": seed, "init_distance": scorer.before, "window": defaults.auto_stop_window,
              "threshold": defaults.auto_stop_threshold}

    # (a) is checkpointed every 10 steps so its last `a_tail` steps show how much its final ratio is one draw of many
    a = train(prep, workdir / "a", seed, lr="0.005", loss_weighting="none", batch_size=1, steps=a_steps,
              save_every=10 if a_tail else every * 2, validate_every=every * 2, ema_decay=0.0)
    b = train(prep, workdir / "b", seed, steps=300, save_every=every, validate_every=30)
    # (c): the same recipe validating every 5 steps (what auto-stop does), to c_steps with the rule advisory, so the
    # curve also serves the sweep; the rule saves a checkpoint where it fires, and training is identical to a run
    # that stopped there (the rule and the validation never touch the training RNG), so (c) is this run up to it.
    c = train(prep, workdir / "c", seed, steps=c_steps, save_every=every, validate_every=5)
    # no hold-out: the suggested best step is where the rule fired (basis "flat"; a rule that never fired leaves the
    # checkpoint with the lowest validation loss as the suggestion, basis "validation", which is no stop)
    fired = c["summary"].get("best_step") if c["summary"].get("best_basis") == "flat" else None
    runs = {"a": a, "b": b, "c": c}
    stops = {"c": fired}
    if ema:  # (d): (c) with the vectors' moving average (ema_decay), which also moves where the rule fires
        runs["d"] = d = train(prep, workdir / "d", seed, steps=c_steps, save_every=every, validate_every=5,
                              ema_decay=ema)
        stops["d"] = d["summary"].get("best_step") if d["summary"].get("best_basis") == "flat" else None
    for key, run in runs.items():
        grid = every * 2 if key == "a" else every
        ratios = score_run(run, scorer, keep=lambda step, g=grid: step % g == 0 or step == stops.get(key))
        end = stops.get(key) or run["summary"]["step"]
        ratios_to_end = {s: r for s, r in ratios.items() if s <= end}
        step, secs = first_good(ratios_to_end, run["elapsed"])
        result[key] = {"steps_to_good": step, "seconds_to_good": secs, "final_step": end,
                       "final_ratio": ratios[end], "seconds_total": run["elapsed"][end],
                       "best_ratio_step": min(ratios_to_end, key=ratios_to_end.get),
                       "best_ratio": min(ratios_to_end.values()), "ratios": ratios}
    result["c"]["auto_stop_step"] = fired
    if ema:
        result["d"]["auto_stop_step"] = stops["d"]
        result["d"]["ema_decay"] = ema
    if a_tail:
        tail = score_run(a, scorer, keep=lambda step: step > a_steps - a_tail)
        values = sorted(tail.values())
        result["a"]["tail"] = {"from": a_steps - a_tail, "min": values[0], "median": values[len(values) // 2],
                               "max": values[-1], "n": len(values), "ratios": tail}
    if recheck:
        for key in result.keys() & {"a", "c", "d"}:
            result[key]["final_ratio_recheck"] = scorer.ratio(checkpoint_file(runs[key], result[key]["final_step"]),
                                                              recheck)
    result["c"]["best_ratio_step_whole"] = min(result["c"]["ratios"], key=result["c"]["ratios"].get)
    if sweep:
        vals = [(e.step, e.val_loss) for e in c["events"] if isinstance(e, ev.Validation)]
        c_ratios = result["c"]["ratios"]
        table = []
        for window in SWEEP_WINDOWS:
            for threshold in SWEEP_THRESHOLDS:
                stop = replay(vals, window, threshold)
                at = stop if stop is not None else c_steps
                ck, ratio = nearest_ratio(c_ratios, at)
                table.append({"window": window, "threshold": threshold, "stop": stop, "ratio": ratio,
                              "scored_at": ck, "seconds": c["elapsed"].get(at)})
        result["sweep"] = {"table": table, "best_ratio_step": min(c_ratios, key=c_ratios.get),
                           "best_ratio": min(c_ratios.values())}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--every", type=int, default=50, help="checkpoint (and scoring) interval of runs (b) and (c); "
                   "(a) every twice that")
    p.add_argument("--a-steps", type=int, default=400, help="(a)'s fixed steps (batch 1)")
    p.add_argument("--c-steps", type=int, default=400, help="(c)'s most steps")
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

    ThreadChoice(0).apply()  # scoring runs outside the trainer: the free cores for it too (OpenMP spinning)
    print(f"load average at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores)", flush=True)
    rows = []
    t0 = time.time()
    for seed in (int(s) for s in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="tiwiz-ttq-") as tmp:
            r = run_seed(Path(tmp), seed, args.every, args.sweep, args.a_steps, args.c_steps, args.ema,
                         args.recheck, args.a_tail)
        r["load_after"] = os.getloadavg()
        rows.append(r)
        if args.save:
            Path(args.save).write_text(json.dumps(rows, default=str, indent=1))
        if args.json:
            print(json.dumps(r, default=str), flush=True)
            continue
        print(f"\nseed {seed} (init distance {r['init_distance']:.3f}; load {os.getloadavg()[0]:.1f})", flush=True)
        labels = [("a", "A1111 defaults"), ("b", "our defaults"), ("c", "ours + auto-stop")]
        for key, label in labels + ([("d", f"(c) + ema {args.ema:g}")] if "d" in r else []):
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
                f"({k}) {r[k]['final_ratio_recheck']:.2f}" for k in ("a", "c", "d") if k in r), flush=True)
        if "sweep" in r:
            sw = r["sweep"]
            print(f"  sweep on the (c) curve (best ratio {sw['best_ratio']:.2f} at step {sw['best_ratio_step']}):")
            for row in sw["table"]:
                stop = row["stop"] if row["stop"] is not None else "none"
                print(f"    window {row['window']:3d} threshold {row['threshold']:.2f}: stop {stop}, ratio "
                      f"{row['ratio']:.2f}")
    if len(rows) > 1 and not args.json:
        print("\nall seeds:")
        for key in [k for k in ("c", "d") if k in rows[0]]:
            ratios = []
            worse = [r["seed"] for r in rows if r[key]["final_ratio"] > r["a"]["final_ratio"]]
            for r in rows:
                a_time = r["a"]["seconds_to_good"] if r["a"]["seconds_to_good"] is not None else r["a"]["seconds_total"]
                ratios.append(r[key]["seconds_total"] / a_time)
            line = (f"  ({key})/(a) wall time: {', '.join(f'{x:.2f}' for x in ratios)} (median "
                    f"{sorted(ratios)[len(ratios) // 2]:.2f}); seeds where ({key}) ends worse than (a): {worse or 'none'}")
            if "final_ratio_recheck" in rows[0][key]:
                rechecked = [r["seed"] for r in rows if r[key]["final_ratio_recheck"] > r["a"]["final_ratio_recheck"]]
                line += f" ({args.recheck} seeds: {rechecked or 'none'})"
            print(line, flush=True)
    print(f"\ntotal {time.time() - t0:.0f} s; load average at end: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
