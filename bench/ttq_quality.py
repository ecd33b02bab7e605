"""The norm modes and the editability signal in bench/time_to_quality.py (issue 24).

- `--norm-modes clamp,preserve`: for each mode, a run like (c) (the demo's recipe with auto-stop validation) with
  `norm_mode` set (`--clamp-k` for clamp); (c) itself is `free`. Keys "clamp" and "preserve" beside a/b/c/d, scored
  the same way (time to good at `--fine` resolution, final ratio, the 32-seed recheck).
- The editability signal (core.training.editability) of every final file, measured on the scoring pipeline's text
  encoder against the init text ("heart", laid out over the 2 vectors), and along each validated run from its
  `validation` events. Whether it sees the drift the validation loss does not: the Spearman correlation of the ratio
  with the editability and with the validation loss over a run's scored checkpoints after it first got good (the
  plateau drift); and whether it helps the best-step choice: the ratio at the checkpoint of highest editability among
  those whose validation loss is within `TIE` of the run's lowest, against the ratio at auto-stop's step.
- Each final file's vector norms per vector, against the vocabulary's mean norm and (clamp) the cap, so the table
  shows that a mode keeps its promise.
"""

from __future__ import annotations

TIE = 0.01  # validation losses within 1% of the lowest count as tied for the editability tie-break


class Editability:
    """The editability signal of embedding files, with the Scorer's pipeline (SD1: one text encoder)."""

    def __init__(self, scorer) -> None:
        from core.training.editability import EditabilityProbe, pipeline_encoder

        self.scorer = scorer
        self.text = scorer.demo.bind_vectors(scorer.pipe, "<demo>", scorer.init)
        encode, tokenizers = pipeline_encoder(scorer.pipe)
        self.probe = EditabilityProbe(encode, tokenizers, self.text)
        self.probe.set_reference()
        weight = scorer.pipe.text_encoder.get_input_embeddings().weight.detach().float()
        self.vocab_mean_norm = float(weight[:49408].norm(dim=1).mean())

    def of(self, path) -> float:
        self.scorer.demo.bind_vectors(self.scorer.pipe, "<demo>", self.scorer.demo.load_vectors(path))
        return self.probe.measure()

    @staticmethod
    def norms(path) -> list[float]:
        from core.world import demo_job

        return [round(float(n), 4) for n in demo_job.load_vectors(path).norm(dim=1)]


def norm_runs(train, prep, workdir, seed: int, modes: list[str], k: float, c_steps: int, fine: int,
              c_every: int) -> tuple[dict, dict]:
    """({mode: run}, {mode: auto-stop step}) for each norm mode other than free ((c) is free)."""
    runs, stops = {}, {}
    for mode in modes:
        if mode == "free":
            continue
        run = train(prep, workdir / f"n-{mode}", seed, steps=c_steps, save_every=fine, validate_every=c_every,
                    norm_mode=mode, norm_clamp_k=k)
        runs[mode] = run
        stops[mode] = run["summary"].best_step if run["summary"].best_basis == "flat" else None
    return runs, stops


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None under 3 points or for a constant series."""
    if len(xs) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for m in range(i, j + 1):
                out[order[m]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx and vy else None


def annotate(result: dict, runs: dict, editability: Editability, checkpoint_file, k: float) -> None:
    """Add the editability, norm and drift figures to each run's entry of `result` (in place)."""
    from core.runs import run_events as ev

    for key, run in runs.items():
        entry = result[key]
        final = checkpoint_file(run, entry["final_step"])
        entry["editability_final"] = editability.of(final)
        entry["norms_final"] = editability.norms(final)
        entry["norm_ratio_max"] = max(entry["norms_final"]) / editability.vocab_mean_norm
        vals = {e.step: (e.val_loss, e.editability) for e in run["events"] if isinstance(e, ev.Validation)}
        entry["editability_curve"] = {s: v[1] for s, v in vals.items() if v[1] is not None}
        good = entry["steps_to_good"]
        after = [(s, r) for s, r in entry["ratios"].items() if good is not None and s >= good and s in vals]
        entry["drift"] = {
            "points": len(after),
            "ratio_vs_editability": spearman([r for _, r in after], [vals[s][1] for s, _ in after])
            if all(vals[s][1] is not None for s, _ in after) else None,
            "ratio_vs_val_loss": spearman([r for _, r in after], [vals[s][0] for s, _ in after])}
        entry["tie_break"] = _tie_break(entry, vals, run, checkpoint_file, editability)
    result["vocab_mean_norm"] = editability.vocab_mean_norm
    result["clamp_k"] = k


def _tie_break(entry: dict, vals: dict, run: dict, checkpoint_file, editability: Editability) -> dict | None:
    """The checkpoint of highest editability among those validated within TIE of the lowest validation loss (up to
    the run's end), and its ratio, against the run's own end (auto-stop's step, or the last)."""
    steps = [s for s in vals if s <= entry["final_step"] and s > 0 and s in entry["ratios"]]
    if not steps or any(vals[s][1] is None for s in steps):
        return None
    low = min(vals[s][0] for s in steps)
    tied = [s for s in steps if vals[s][0] <= low * (1 + TIE)]
    pick = max(tied, key=lambda s: vals[s][1])
    return {"step": pick, "ratio": entry["ratios"][pick], "editability": vals[pick][1], "tied": len(tied),
            "end_ratio": entry["final_ratio"]}


def print_seed(r: dict, keys: list[str]) -> None:
    """The issue-24 lines of one seed."""
    mean = r.get("vocab_mean_norm")
    if mean is None:
        return
    print(f"  editability (1 = the init text's) and norms (vocabulary mean {mean:.3f}; clamp cap "
          f"{r['clamp_k'] * mean:.3f}):", flush=True)
    for key in keys:
        x = r[key]
        d = x["drift"]
        tb = x["tie_break"]
        corr = ", ".join(f"{name} {d[field]:+.2f}" for name, field in (("edit", "ratio_vs_editability"),
                                                                       ("val", "ratio_vs_val_loss"))
                         if d[field] is not None)
        print(f"    ({key}) editability {x['editability_final']:.3f}; norms {x['norms_final']} "
              f"(max {x['norm_ratio_max']:.2f}x mean); ratio correlation after good over {d['points']} checkpoints: "
              f"{corr or 'n/a'}" + (f"; tie-break step {tb['step']} ratio {tb['ratio']:.2f} (end {tb['end_ratio']:.2f})"
                                    if tb else ""), flush=True)


def print_summary(rows: list[dict], modes: list[str]) -> None:
    """Across seeds, per norm mode: time to good against (a), the final distance, editability, the norm range."""
    keys = ["c"] + [m for m in modes if m != "free"]
    print("\nnorm modes across seeds ((c) is free):")
    for key in keys:
        if key not in rows[0]:
            continue
        times = [f"{r[key]['seconds_to_good'] / r['a']['seconds_to_good']:.2f}" if r["a"]["seconds_to_good"] and
                 r[key]["seconds_to_good"] is not None else "n/a" for r in rows]
        primary = "final_ratio_recheck" if "final_ratio_recheck" in rows[0][key] else "final_ratio"
        finals = [f"{r[key][primary]:.2f}" for r in rows]
        worse = [r["seed"] for r in rows if r[key][primary] > r["a"][primary]]
        edits = [f"{r[key]['editability_final']:.3f}" for r in rows]
        norms = [f"{r[key]['norm_ratio_max']:.2f}" for r in rows]
        print(f"  ({key}) time to good / (a): {', '.join(times)}; final ({primary}): {', '.join(finals)} (worse "
              f"than (a) on seeds {worse or 'none'}); editability: {', '.join(edits)}; max norm / vocab mean: "
              f"{', '.join(norms)}", flush=True)
