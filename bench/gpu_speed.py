"""The speed parts of bench/gpu_check.py (issue 23), each run in its own child process (`gpu_check.py --speed PART`):

  capture  SD1.5 512 px bf16 batch 1 (and SDXL 1024 px when time is left): our step eager, captured with CUDA
           graphs by hand (cuda_graph) and with torch.compile(mode="reduce-overhead") (compile, twice: the second
           run, after torch._dynamo.reset(), loads inductor's on-disk cache); s/step, capture/compile seconds,
           break-even steps (capture seconds / seconds saved a step), and the step's own kernel time
           (torch.profiler, device time of the kernels of the eager step) against the captured step's wall time
           (target: <= 1.5x)
  gc       SDXL 1024 px bf16 batch 1: checkpointing auto (what it chose, why, the modelled need against the measured
           peak) against the no-checkpointing floor (target <= 1.10x on an 80 GiB card), and checkpointing on
           against its floor (target <= 1.15x)
  batch    images/s and peak memory at batch 1, 2, 4 and 8, SD1.5 512 px and SDXL 1024 px, bf16, compile on,
           checkpointing auto: which batch size to use on which card

`--dry-run`: the same code on CPU with the tiny models at 64 px, fp32, 1-2 steps; captured cases run the captured
step's code path uncaptured (`static`), since CUDA graphs need a GPU (compile = on is refused on CPU).
"""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path

from bench import gpu_check as base

SPEED_PARTS = ("capture", "gc", "batch")
CAPTURE_CASES = ("eager", "cuda_graph", "compile", "compile_cached")
GC_CASES = ("floor_off", "ours_auto", "floor_on", "ours_on")
SPEC = {
    "capture": dict(families=("sd15", "sdxl"), sizes={"sd15": 512, "sdxl": 1024}, warmup=3, timed=20, profiled=5),
    "gc": dict(family="sdxl", size=1024, warmup=2, timed=6),
    "batch": dict(families=("sd15", "sdxl"), sizes={"sd15": 512, "sdxl": 1024}, batches=(1, 2, 4, 8), warmup=2,
                  timed=5),
}
DRY_SPEC = {
    "capture": dict(families=("sd15",), sizes={"sd15": 64}, warmup=1, timed=2, profiled=2),
    "gc": dict(family="sdxl", size=64, warmup=1, timed=2),
    "batch": dict(families=("sd15", "sdxl"), sizes={"sd15": 64, "sdxl": 64}, batches=(1, 2), warmup=1, timed=1),
}
IMAGES = 8  # batch 8 needs 8 training images (hold-out off)
DRY_IMAGES = 2  # the dry run's largest batch


# ---- the real trainer, timed ---------------------------------------------------------------------------------------
def run_ours(family, device, precision, size, data, *, warmup, timed, dry, settings=None, capture_impl=None,
             extra_steps=0, window=None, window_steps=None, between=None) -> dict:
    """The real Trainer on a random-weight model (handed to it in place of loading a file), timed from its step
    events: `steps` (seconds of the warmup + timed steps), its `compile`/`memory_plan` events, losses and peak memory.
    `extra_steps` train after those, untimed; `window` (a profiler: start/stop) covers steps window_steps = (first,
    last), 1-based; `between()` runs after each step event and is left out of the next step's time. `capture_impl`
    forces a capture implementation."""
    import core.models.loader as loader
    from core.events import CallbackSink
    from core.training import trainer as trainer_module
    from core.training.config import TrainConfig

    mem = base._Memory(device)
    model = base.build_model(family, device, dry)
    steps = warmup + timed + extra_steps
    config = dict(model=f"{family}-random", data=str(data), name="gpucheck", steps=steps, width=size, height=size,
                  save_every=0, preview_every=0, validate_every=0, device=device.type, precision=precision,
                  vectors=base.VECTORS, init_text=base.INIT_TEXT, template="style_filewords", seed=0, overwrite=True,
                  holdout=0, **(settings or {}))

    def fake(*args, dtype=None, **kwargs):  # the session loads "the model" through this function
        if dtype is not None:
            base._cast(model, dtype)
        return model

    stamps, ends, seen = [], [], {"compile": [], "memory_plan": [], "loss": [], "error": []}

    def on_event(event):
        kind = event.get("type")
        if kind == "started":
            mem.steps_begin()
            stamps.append(time.perf_counter())
            ends.append(stamps[-1])
        elif kind == "step":
            base._sync(device)
            stamps.append(time.perf_counter())
            seen["loss"].append(event.get("loss"))
            n = len(stamps) - 1  # steps done
            if window is not None and window_steps and n == window_steps[0] - 1:
                window.start()
            if window is not None and window_steps and n == window_steps[1]:
                window.stop()
            if between is not None:
                between()
            ends.append(time.perf_counter())
        elif kind in ("compile", "memory_plan"):
            seen[kind].append({k: v for k, v in event.items() if k != "time"})
        elif kind == "error":
            seen["error"].append(event.get("message"))

    original, out_dir = loader.load_model, Path(tempfile.mkdtemp(prefix=f"tiwiz-gpu-speed-{family}-"))
    loader.load_model = fake
    try:
        trainer = trainer_module.Trainer(TrainConfig.from_dict(config), out_dir, CallbackSink(on_event))
        trainer.capture_impl = capture_impl
        outcome = trainer.run()
    finally:
        loader.load_model = original
        shutil.rmtree(out_dir, ignore_errors=True)
    times = [b - a for a, b in zip(ends, stamps[1:])]
    if len(times) < warmup + timed:
        raise RuntimeError(f"only {len(times)} step events ({getattr(outcome, 'reason', '?')}; {seen['error']})")
    out = base._timing(times[:warmup + timed], dict(warmup=warmup, timed=timed))
    out.update(mem.report(), compile=seen["compile"], memory_plan=seen["memory_plan"],
               losses=seen["loss"][:warmup + timed], precision_used=trainer.session.precision.name,
               weight_dtype=str(next(model.unet.parameters()).dtype).replace("torch.", ""))
    plan = seen["compile"]
    out["mode"] = plan[-1]["mode"] if plan else "?"
    out["capture_s"] = round(sum(e.get("seconds") or 0.0 for e in plan), 3)
    out["gradient_checkpointing"] = seen["memory_plan"][-1]["gradient_checkpointing"] if seen["memory_plan"] else None
    del trainer, model
    return out


def _case(result: dict, name: str, runner) -> dict | None:
    """Run one case into result["cases"][name] (ok / skipped / failed with the reason); never raises."""
    t0 = time.monotonic()
    print(f"--- {result['part']} {name} ---", flush=True)
    try:
        entry = {"status": "ok", **runner()}
    except base.Skip as exc:
        entry = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # OOM, a CUDA error, a bug: recorded, the next case still runs
        entry = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:400]}",
                 "traceback": traceback.format_exc()[-2500:]}
        traceback.print_exc()
    entry["seconds"] = round(time.monotonic() - t0, 1)
    result["cases"][name] = entry
    print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k not in ('traceback', 'losses')})}", flush=True)
    gc.collect()
    _empty_cache()
    return entry if entry["status"] == "ok" else None


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _late(deadline, margin: float) -> bool:
    return deadline is not None and time.time() > deadline - margin


def _setting(dry: bool):
    import torch

    device = torch.device("cpu" if dry else "cuda")
    precision = "fp32" if dry else ("bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16")
    return device, precision


# ---- capture: eager vs CUDA graphs vs torch.compile --------------------------------------------------------------
def capture_part(result: dict, dry: bool, deadline) -> None:
    spec = (DRY_SPEC if dry else SPEC)["capture"]
    device, precision = _setting(dry)
    for family in spec["families"]:
        if family != spec["families"][0] and _late(deadline, 90):
            result.setdefault("notes", []).append(f"{family}: skipped, time budget")
            continue
        size = spec["sizes"][family]
        data = base._make_images(Path(tempfile.mkdtemp(prefix="tiwiz-gpu-capture-")) / "data",
                                 DRY_IMAGES if dry else IMAGES, size)
        sub = {"part": "capture", "family": family, "size": size, "precision": precision, "cases": {}}
        result["families"][family] = sub
        common = dict(warmup=spec["warmup"], timed=spec["timed"], dry=dry)
        _case(sub, "eager", lambda: _eager_with_kernel_time(family, device, precision, size, data, spec, dry))
        for case in CAPTURE_CASES[1:]:
            if _late(deadline, 40 if not dry else 5):
                sub["cases"][case] = {"status": "skipped", "reason": "time budget"}
                continue
            impl = "static" if dry else case.replace("_cached", "")
            if case == "compile_cached" and not dry:  # forget this process's compiled code: the disk cache answers
                import torch._dynamo

                torch._dynamo.reset()
            _case(sub, case, lambda: {**run_ours(family, device, precision, size, data, settings={"compile": "off"},
                                                 capture_impl=impl, **common), "impl": impl})
        sub["summary"] = capture_summary(sub)


def _eager_with_kernel_time(family, device, precision, size, data, spec, dry) -> dict:
    """The eager step's wall time, then the device time of its kernels over `profiled` more steps (torch.profiler)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities, record_shapes=False)
    first = spec["warmup"] + spec["timed"] + 1
    out = run_ours(family, device, precision, size, data, warmup=spec["warmup"], timed=spec["timed"], dry=dry,
                   settings={"compile": "off"}, extra_steps=spec["profiled"], window=prof,
                   window_steps=(first, first + spec["profiled"] - 1))
    kernels = [e for e in prof.key_averages() if e.device_type != DeviceType.CPU]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6 / spec["profiled"]
    out["kernel_s_per_step"] = round(busy, 5) if kernels else None  # None on a CPU: no kernels to time
    return out


def capture_summary(sub: dict) -> dict:
    """Ratios and break-evens of one family's capture cases."""
    cases = sub["cases"]
    eager = (cases.get("eager") or {}).get("s_per_step")
    kernel = (cases.get("eager") or {}).get("kernel_s_per_step")
    out = {"eager_s_per_step": eager, "kernel_s_per_step": kernel}
    for case in CAPTURE_CASES[1:]:
        c = cases.get(case) or {}
        s = c.get("s_per_step")
        if c.get("status") != "ok" or not s:
            continue
        row = {"s_per_step": s, "capture_s": c.get("capture_s"), "mode": c.get("mode")}
        if eager:
            row["speedup"] = round(eager / s, 3)
            saved = eager - s
            row["break_even_steps"] = round(c["capture_s"] / saved) if saved > 0 and c.get("capture_s") else None
        if kernel:
            row["x_kernel_time"] = round(s / kernel, 3)
        out[case] = row
    return out


# ---- gc: checkpointing auto against the floors -------------------------------------------------------------------
def gc_part(result: dict, dry: bool, deadline) -> None:
    spec = (DRY_SPEC if dry else SPEC)["gc"]
    device, precision = _setting(dry)
    family, size = spec["family"], spec["size"]
    data = base._make_images(Path(tempfile.mkdtemp(prefix="tiwiz-gpu-gc-")) / "data", DRY_IMAGES if dry else 4, size)
    sub = {"part": "gc", "family": family, "size": size, "precision": precision, "cases": {}}
    result["families"][family] = sub
    timing = dict(warmup=spec["warmup"], timed=spec["timed"])
    for case in GC_CASES:
        if _late(deadline, 30 if not dry else 5):
            sub["cases"][case] = {"status": "skipped", "reason": "time budget"}
            continue
        if case.startswith("floor"):
            _case(sub, case, lambda: _floor(family, device, precision, size, case == "floor_on", timing, dry))
        else:
            setting = "auto" if case == "ours_auto" else "on"
            _case(sub, case, lambda: run_ours(family, device, precision, size, data, dry=dry, **timing,
                                              settings={"compile": "off", "gradient_checkpointing": setting}))
    sub["summary"] = gc_summary(sub)


def _floor(family, device, precision, size, checkpointing: bool, timing: dict, dry: bool) -> dict:
    mem = base._Memory(device)
    step, finish = base._floor_stepper(family, device, precision, dict(size=size, gc=checkpointing, **timing), dry)
    mem.steps_begin()
    out = base._timed(step, device, timing)
    out["weight_dtype"] = finish()
    out.update(mem.report())
    return out


def gc_summary(sub: dict) -> dict:
    from core.training.memory_plan import step_need_bytes

    cases = sub["cases"]
    s = {c: (cases.get(c) or {}).get("s_per_step") for c in GC_CASES}
    out = {}
    if s["ours_auto"] and s["floor_off"]:
        out["auto_x_floor_off"] = round(s["ours_auto"] / s["floor_off"], 3)
    if s["ours_on"] and s["floor_on"]:
        out["on_x_floor_on"] = round(s["ours_on"] / s["floor_on"], 3)
    auto = cases.get("ours_auto") or {}
    if auto.get("memory_plan"):
        plan = auto["memory_plan"][-1]
        out.update(auto_choice=plan.get("gradient_checkpointing"), auto_reason=plan.get("reason"))
    floor_off = cases.get("floor_off") or {}
    if floor_off.get("peak_steps_gib") is not None:  # the model's need (without its preview room) against a peak
        modelled = step_need_bytes(sub["family"], sub["size"], sub["size"], 1, sub["precision"], False,
                                   previews=False) / 2 ** 30
        out["modelled_need_gib"], out["measured_peak_steps_gib"] = round(modelled, 2), floor_off["peak_steps_gib"]
    return out


# ---- batch: images/s per batch size -------------------------------------------------------------------------------
def batch_part(result: dict, dry: bool, deadline) -> None:
    spec = (DRY_SPEC if dry else SPEC)["batch"]
    device, precision = _setting(dry)
    for family in spec["families"]:
        size = spec["sizes"][family]
        data = base._make_images(Path(tempfile.mkdtemp(prefix="tiwiz-gpu-batch-")) / "data",
                                 DRY_IMAGES if dry else IMAGES, size)
        sub = {"part": "batch", "family": family, "size": size, "precision": precision, "cases": {}}
        result["families"][family] = sub
        settings = {"compile": "off" if dry else "on", "gradient_checkpointing": "auto"}
        for batch in spec["batches"]:
            name = f"batch{batch}"
            if _late(deadline, 25 if not dry else 5):
                sub["cases"][name] = {"status": "skipped", "reason": "time budget"}
                continue
            entry = _case(sub, name, lambda: run_ours(
                family, device, precision, size, data, warmup=spec["warmup"], timed=spec["timed"], dry=dry,
                settings={**settings, "batch_size": batch}, capture_impl="static" if dry else None))
            if entry:
                entry["images_per_s"] = round(batch / entry["s_per_step"], 3)


def speed_main(part: str, dry: bool, result_path: Path, deadline: float | None) -> int:
    """The child process of one speed part: its result JSON is written after every case."""
    import torch

    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    result = {"part": part, "dry_run": dry, "torch": torch.__version__, "families": {}}
    if not dry:
        result["gpu"] = torch.cuda.get_device_name()
    runner = {"capture": capture_part, "gc": gc_part, "batch": batch_part}[part]
    try:
        runner(result, dry, deadline)
    finally:
        base._atomic_write(result_path, json.dumps(result, indent=2, default=str))
    return 0


def speed_rows(part: str, speed: dict) -> list[str]:
    """Markdown rows of a speed part's result for gpu_check.md."""
    rows = []
    for family, sub in (speed.get("families") or {}).items():
        for case, c in sub.get("cases", {}).items():
            figures = [f"{c['s_per_step']} s/step" if c.get("s_per_step") else ""]
            for key, label in (("images_per_s", "images/s"), ("capture_s", "capture s"), ("peak_gib", "peak GiB"),
                               ("kernel_s_per_step", "kernel s/step"), ("mode", "mode"),
                               ("gradient_checkpointing", "checkpointing")):
                if c.get(key) not in (None, ""):
                    figures.append(f"{label} {c[key]}")
            note = c.get("reason") or ", ".join(f for f in figures if f)
            rows.append(f"| {part} | {family} {sub.get('size')} px {sub.get('precision')} | {case} | {c.get('status')} "
                        f"| {str(note).replace('|', '/')[:240]} |")
        if sub.get("summary"):
            rows.append(f"| {part} | {family} | summary | | {json.dumps(sub['summary'])[:400].replace('|', '/')} |")
    return rows
