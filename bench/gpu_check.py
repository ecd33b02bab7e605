"""GPU proof: one call that shows every CUDA path of tiwiz works, and how fast the training step is.

    python3 bench/gpu_check.py                # on a machine with an NVIDIA GPU, in the repository root
    python3 bench/gpu_check.py --dry-run      # the same parts on CPU at tiny sizes (CI runs this)

Parts, each reported ok / failed / skipped (with the reason) and its wall time; the script never stops half-way
silently and always writes its report:
  setup  torch with CUDA, diffusers, transformers, ... importable; what is missing is installed into a private
         folder, first from local wheels (`.whl/` in the repository root or $TIWIZ_WHEELS), then from the package
         index, within --install-timeout
  tests  `pytest -m cuda` (tests/test_cuda_*.py and the CUDA test of tests/test_models_device.py; test_cuda_capture:
         captured steps against eager, torch.compile, one graph per bucket, kill -9 + resume of a captured run, a
         failed capture, checkpointing auto, a real out-of-memory step)
  capture, gc, batch  issue 23's speed parts (bench/gpu_speed.py): eager vs CUDA graphs vs torch.compile with
         capture seconds and break-even steps and the kernel time; checkpointing auto vs the floors; images/s and
         peak memory at batch 1/2/4/8 for SD1.5 512 px and SDXL 1024 px
  sd15   the SD1.5 architecture with random weights (core/data/configs/sd1) at 512 px, bf16, batch 1:
           floor      text encoder + UNet forward and backward, frozen weights in the dtype ours uses (bf16 under
                      bf16 autocast), gradients into the token embeddings
           ours       the real Trainer (core.training.trainer), timed from its own step events
           diffusers  our equivalent of the step of diffusers' examples/textual_inversion/textual_inversion.py
                      (whole embedding matrix trainable under AdamW, non-placeholder rows restored after each step,
                      VAE encode each step, UNet/VAE weights cast to bf16, text encoder under autocast)
         with peak torch.cuda.max_memory_allocated for each
  demo   `python -m core.cli demo --device cuda` end to end (detached worker, previews, before/after grid)
  sdxl   the same three for the SDXL architecture (core/data/configs/sdxl) at 1024 px, bf16, gradient
         checkpointing; "ours" is skipped with the reason while our SDXL training path is not in the tree

It writes gpu_check.json, gpu_check.md and gpu_check.log into --out (default: $OUT, else bench/out/). A global
time budget (--budget, default 420 s) bounds the whole run: each part runs in its own process with a time limit,
and a part that no longer fits is skipped with the reason "time budget". Exit status 0 when no part failed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# run in this order: the CUDA tests, then issue 23's speed parts (bench/gpu_speed.py), then the older comparisons
PARTS = ("setup", "tests", "capture", "gc", "batch", "sd15", "demo", "sdxl", "profile")
DEFAULT_PARTS = ("tests", "capture", "gc", "batch", "sd15", "demo", "sdxl")  # profile only when asked for
CAP_S = {"setup": 240, "tests": 300, "capture": 240, "gc": 150, "batch": 200, "sd15": 100, "demo": 90, "sdxl": 150,
         "profile": 150}  # per-part limits (GPU)
DRY_CAP_S = {"setup": 60, "tests": 180, "capture": 240, "gc": 180, "batch": 240, "sd15": 120, "demo": 180,
             "sdxl": 120, "profile": 120}
SPEED = ("capture", "gc", "batch")  # bench/gpu_speed.py
MIN_START_S = 15  # a part is not started with less time than this left
BENCH = {
    # family: size (px), warm-up steps, timed steps, gradient checkpointing
    # rounds: the cases run floor, ours, diffusers, floor, ours, ... so a drift of the machine (clocks, the host's
    # Python speed: a 512 px SD1.5 step is mostly kernel-launch time on a fast GPU) does not favour the first case
    "sd15": dict(size=512, warmup=3, timed=10, gc=False, rounds=3, paired=20),
    "sdxl": dict(size=1024, warmup=2, timed=5, gc=True, rounds=1),
}
DRY_BENCH = {"sd15": dict(size=64, warmup=1, timed=2, gc=False, rounds=2, paired=3),
             "sdxl": dict(size=64, warmup=1, timed=2, gc=True, rounds=1)}
CASES = ("floor", "ours", "diffusers")
VECTORS = 4
INIT_TEXT = "a thing"
MODULES = {  # import name: pip name
    "torch": "torch", "diffusers": "diffusers", "transformers": "transformers", "safetensors": "safetensors",
    "PIL": "Pillow", "numpy": "numpy", "cv2": "opencv-python-headless", "pytest": "pytest",
}
SITE = Path(tempfile.gettempdir()) / "tiwiz-gpu-check-site"


# =====================================================================================================================
# The orchestrator (no torch import in this process: every part runs in a child process)
# =====================================================================================================================
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 64 px, 1+2 steps (proves the script)")
    parser.add_argument("--out", help="report folder (default: $OUT, else bench/out)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 420; dry 600)")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help=f"comma-separated parts after setup (default: {','.join(DEFAULT_PARTS)}; also: profile, "
                             f"torch.profiler and cProfile tables of the SD1.5 floor and our step)")
    parser.add_argument("--install-timeout", type=float, default=240.0, help="seconds for installing (default 240)")
    # internal: one benchmark family in this process
    parser.add_argument("--bench", choices=sorted(BENCH), help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=sorted(BENCH), help=argparse.SUPPRESS)
    parser.add_argument("--speed", choices=SPEED, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench:
        return bench_main(args.bench, args.dry_run, Path(args.result), args.deadline)
    if args.profile:
        return profile_main(args.profile, args.dry_run, Path(args.result))
    if args.speed:
        from bench.gpu_speed import speed_main

        return speed_main(args.speed, args.dry_run, Path(args.result), args.deadline)

    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget if args.budget is not None else (600.0 if args.dry_run else 420.0)
    check = Check(out, args.dry_run, budget)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS[1:]]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS[1:])})")
    def on_term(signum, frame):  # the caller's time limit: still write the report
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        check.run_setup(args.install_timeout)
        for name in PARTS[1:]:
            if name not in wanted:
                check.record(name, "skipped", "not asked for (--parts)", 0.0)
                continue
            check.run_part(name)
    except KeyboardInterrupt:
        check.kill_child()
        check.note("interrupted (Ctrl-C or SIGTERM): the report holds what ran")
    finally:
        check.write_report()
    print("\n" + check.md_path.read_text(encoding="utf-8"), flush=True)
    print(f"report: {check.json_path}, {check.md_path} and {check.log_path}", flush=True)
    return 1 if any(p["status"] == "failed" for p in check.parts.values()) else 0


class Check:
    def __init__(self, out: Path, dry: bool, budget: float):
        self.out, self.dry, self.budget = out, dry, budget
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget
        self.started_at = _utc_now()
        self.parts: dict[str, dict] = {}
        self.notes: list[str] = []
        self.env_info: dict = {}
        self.json_path, self.md_path, self.log_path = out / "gpu_check.json", out / "gpu_check.md", out / "gpu_check.log"
        self.log_path.write_text(f"tiwiz gpu_check {'(dry run) ' if dry else ''}started {self.started_at}\n")
        self.tmp = Path(tempfile.mkdtemp(prefix="tiwiz-gpu-check-"))
        self.child = None
        self.caps = DRY_CAP_S if dry else CAP_S
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                        TOKENIZERS_PARALLELISM="false")
        if dry:  # a shared CPU: one thread per process, as the test suite does
            self.env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")

    # ---- bookkeeping ---------------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(f"note: {text}")

    def log(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")

    def record(self, name: str, status: str, reason: str, seconds: float, **extra) -> dict:
        part = {"status": status, "reason": reason, "seconds": round(seconds, 1), **extra}
        self.parts[name] = part
        self.log(f"[{name}] {status} in {seconds:.1f} s{': ' + reason if reason else ''}")
        self.write_report()  # after every part: a run killed from outside still leaves a report
        return part

    def limit_for(self, name: str) -> float | None:
        """The seconds this part may take, or None when it no longer fits the budget."""
        left = self.left()
        if left < MIN_START_S:
            return None
        return min(self.caps[name], left)

    # ---- child processes -----------------------------------------------------------------------------------------
    def run_child(self, name: str, cmd: list[str], limit: float, cwd: Path = ROOT) -> dict:
        """Run `cmd` with its output appended to the log; kill its process group at `limit`."""
        self.log(f"[{name}] $ {' '.join(cmd)}   (limit {limit:.0f} s)")
        start = self.log_path.stat().st_size
        t0 = time.monotonic()
        # the child writes straight into the log, so a run killed from outside still leaves its output in $OUT
        with open(self.log_path, "ab") as fh:
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.child = proc
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = self.kill_child()
            except BaseException:  # Ctrl-C / SIGTERM: take the child (and its process group) down too
                self.kill_child()
                raise
            finally:
                self.child = None
        seconds = time.monotonic() - t0
        with open(self.log_path, "rb") as fh:
            fh.seek(start)
            text = fh.read().decode("utf-8", errors="replace")
        self.log(f"[{name}] exit status {rc}{' (killed at the time limit)' if timed_out else ''}")
        return {"rc": rc, "seconds": seconds, "timed_out": timed_out, "output": text}

    def kill_child(self):
        proc = getattr(self, "child", None)
        if proc is None:
            return None
        with _suppress():
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()

    def python(self) -> str:
        return sys.executable

    # ---- setup ---------------------------------------------------------------------------------------------------
    def probe(self) -> dict:
        """What is importable, with versions, and what torch sees (a child process: this one never imports torch).
        The dry run only looks the modules up (importing them all costs seconds on a busy CPU)."""
        code = (
            "import importlib, importlib.metadata, importlib.util, json, sys\n"
            f"mods = {MODULES!r}\n"
            f"dry = {self.dry!r}\n"
            "info = {'python': sys.version.split()[0], 'modules': {}}\n"
            "for m, dist in mods.items():\n"
            "    try:\n"
            "        if dry:\n"
            "            if importlib.util.find_spec(m) is None:\n"
            "                raise ImportError(f'no module named {m}')\n"
            "            info['modules'][m] = importlib.metadata.version(dist)\n"
            "        else:\n"
            "            mod = importlib.import_module(m)\n"
            "            info['modules'][m] = str(getattr(mod, '__version__', 'yes'))\n"
            "    except Exception as exc:\n"
            "        info['modules'][m] = None\n"
            "        info.setdefault('import_errors', {})[m] = f'{type(exc).__name__}: {exc}'[:300]\n"
            "try:\n"
            "    if dry:\n"
            "        raise ImportError('the dry run does not import torch here')\n"
            "    import torch\n"
            "    info['cuda_available'] = torch.cuda.is_available()\n"
            "    info['torch_cuda'] = torch.version.cuda\n"
            "    if info['cuda_available']:\n"
            "        p = torch.cuda.get_device_properties(0)\n"
            "        info.update(gpu=p.name, capability=list(torch.cuda.get_device_capability(0)),\n"
            "                    gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count())\n"
            "except Exception as exc:\n"
            "    info['cuda_available'] = False\n"
            "    info['cuda_error'] = f'{type(exc).__name__}: {exc}'[:300]\n"
            "print('PROBE' + json.dumps(info))\n"
        )
        try:
            proc = subprocess.run([self.python(), "-c", code], capture_output=True, text=True, env=self.env,
                                  timeout=max(10.0, min(120.0, self.left())), cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"modules": {}, "probe_error": "the import probe timed out"}
        line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE")), None)
        if line is None:
            return {"modules": {}, "probe_error": (proc.stderr or proc.stdout)[-1000:]}
        return json.loads(line[len("PROBE"):])

    def run_setup(self, install_timeout: float) -> None:
        t0 = time.monotonic()
        self.env_info = info = self.probe()
        info.update(nvidia_smi=_nvidia_smi(), platform=platform.platform(), cpu_count=os.cpu_count(),
                    load_avg=_load_avg())
        self.log(f"[setup] environment: {json.dumps(info)}")
        missing = [m for m in MODULES if not info.get("modules", {}).get(m)]
        cpu_torch = bool(info.get("modules", {}).get("torch")) and not info.get("cuda_available")
        if self.dry:
            if missing:
                self.record("setup", "failed", f"missing {', '.join(missing)} (the dry run installs nothing)",
                            time.monotonic() - t0)
            else:
                self.record("setup", "ok", "everything importable (dry run: CPU, nothing installed)",
                            time.monotonic() - t0)
            return
        if not missing and not cpu_torch:
            self.record("setup", "ok", f"nothing to install; {info.get('gpu')} (compute capability "
                                       f"{'.'.join(map(str, info.get('capability') or []))})", time.monotonic() - t0)
            return
        steps = []
        wheels_dir = Path(os.environ.get("TIWIZ_WHEELS") or ROOT / ".whl")
        wheels = sorted(wheels_dir.glob("*.whl")) if wheels_dir.is_dir() else []
        self._use_site()
        if wheels:
            limit = min(install_timeout, max(self.left() - 60, 10))
            res = self.run_child("setup", [self.python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                           "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(SITE),
                                           *map(str, wheels)], limit)
            steps.append(f"local wheels from {wheels_dir} ({len(wheels)}): exit {res['rc']}")
            info = self.probe()
            missing = [m for m in MODULES if not info.get("modules", {}).get(m)]
            cpu_torch = bool(info.get("modules", {}).get("torch")) and not info.get("cuda_available")
        if missing or cpu_torch:
            names = [MODULES[m] for m in missing if m != "torch"]
            if "diffusers" in missing:
                names.append("importlib_metadata")
            limit = min(install_timeout - (time.monotonic() - t0), self.left() - 60)
            if limit < 10:
                steps.append(f"no time left to install {', '.join(names + ['torch'] * cpu_torch)} from the index")
            else:
                if names:  # no deps: never replace the machine's numpy/torch under its feet
                    res = self.run_child("setup", [self.python(), "-m", "pip", "install", "-q", "--no-deps",
                                                   "--retries", "1", "--timeout", "15", "--target", str(SITE),
                                                   *names], limit)
                    steps.append(f"pip install {' '.join(names)} from the index: exit {res['rc']}"
                                 f"{' (time limit)' if res['timed_out'] else ''}")
                if "torch" in missing or cpu_torch:
                    limit = min(install_timeout - (time.monotonic() - t0), self.left() - 60)
                    if limit >= 10:
                        res = self.run_child("setup", [self.python(), "-m", "pip", "install", "-q", "--retries", "1",
                                                       "--timeout", "15", "--target", str(SITE), "--upgrade",
                                                       "torch"], limit)
                        steps.append(f"pip install torch (CUDA build) from the index: exit {res['rc']}"
                                     f"{' (time limit)' if res['timed_out'] else ''}")
            info = self.probe()
            missing = [m for m in MODULES if not info.get("modules", {}).get(m)]
            cpu_torch = bool(info.get("modules", {}).get("torch")) and not info.get("cuda_available")
        self.env_info.update({k: v for k, v in info.items() if k in ("modules", "cuda_available", "gpu", "capability",
                                                                    "gpu_memory_gib", "torch_cuda", "import_errors")})
        seconds = time.monotonic() - t0
        if missing or cpu_torch:
            why = []
            if missing:
                why.append(f"still missing: {', '.join(missing)}")
            if cpu_torch:
                why.append("torch sees no CUDA GPU" + (f" ({info.get('cuda_error')})" if info.get("cuda_error") else ""))
            self.record("setup", "failed", "; ".join(why + steps), seconds, install_steps=steps)
        else:
            self.record("setup", "ok", "installed: " + "; ".join(steps), seconds, install_steps=steps)

    def _use_site(self) -> None:
        SITE.mkdir(parents=True, exist_ok=True)
        paths = [str(SITE)] + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        self.env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

    # ---- the parts ------------------------------------------------------------------------------------------------
    def run_part(self, name: str) -> None:
        setup = self.parts.get("setup", {})
        if setup.get("status") == "failed" and not self.dry:
            self.record(name, "skipped", f"setup failed ({setup.get('reason')})", 0.0)
            return
        limit = self.limit_for(name)
        if limit is None:
            self.record(name, "skipped", f"time budget ({self.budget:.0f} s) used up", 0.0)
            return
        t0 = time.monotonic()
        try:
            getattr(self, f"part_{name}")(name, limit)
        except Exception as exc:  # a bug in this script must not lose the other parts
            self.record(name, "failed", f"gpu_check itself: {type(exc).__name__}: {exc}", time.monotonic() - t0,
                        traceback=traceback.format_exc()[-3000:])

    def part_tests(self, name: str, limit: float) -> None:
        junit = self.tmp / "cuda-tests.xml"
        files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_cuda_*.py"))
        files.append("tests/test_models_device.py")
        cmd = [self.python(), "-m", "pytest", "-m", "cuda", "-o", "addopts=", "-p", "no:cacheprovider", "-q", "-rs",
               "--tb=short", f"--junitxml={junit}", *files]
        res = self.run_child(name, cmd, limit)
        summary = _read_junit(junit)
        counts = summary.get("counts", {})
        extra = {"tests": summary.get("tests", []), "counts": counts, "exit_status": res["rc"]}
        text = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no result file"
        if res["timed_out"]:
            self.record(name, "failed", f"time limit {limit:.0f} s reached ({text})", res["seconds"],
                        log_tail=res["output"][-3000:], **extra)
        elif res["rc"] == 0 and counts.get("passed", 0) == 0 and not self.dry:
            self.record(name, "failed", f"no CUDA test ran ({text}): pytest saw no GPU?", res["seconds"],
                        log_tail=res["output"][-3000:], **extra)
        elif res["rc"] == 0:
            note = " (dry run: no CUDA, skipped as they must be)" if self.dry else ""
            self.record(name, "ok", text + note, res["seconds"], **extra)
        else:
            failed = [t["name"] for t in summary.get("tests", []) if t["outcome"] in ("failed", "error")]
            self.record(name, "failed", f"pytest exit {res['rc']} ({text})" + (f": {', '.join(failed)}" if failed
                                                                             else ""), res["seconds"],
                        log_tail=res["output"][-4000:], **extra)

    def part_sd15(self, name: str, limit: float) -> None:
        self._bench_part(name, limit)

    def part_sdxl(self, name: str, limit: float) -> None:
        self._bench_part(name, limit)

    def _bench_part(self, name: str, limit: float) -> None:
        result_file = self.tmp / f"{name}.json"
        deadline_wall = time.time() + limit - 5  # the child skips cases that would not fit
        cmd = [self.python(), str(Path(__file__).resolve()), "--bench", name, "--result", str(result_file),
               "--deadline", f"{deadline_wall:.1f}"] + (["--dry-run"] if self.dry else [])
        res = self.run_child(name, cmd, limit)
        try:
            bench = json.loads(result_file.read_text())
        except (OSError, ValueError):
            bench = {"cases": {}}
        cases = bench.get("cases", {})
        for case in CASES:  # every case gets a status, also when the child died before reaching it
            if case not in cases:
                why = "the benchmark process was killed at its time limit" if res["timed_out"] else \
                    f"the benchmark process ended (exit {res['rc']}) before this case"
                cases[case] = {"status": "failed" if res["rc"] != 0 or res["timed_out"] else "skipped", "reason": why}
        bench["cases"] = cases
        statuses = {c: cases[c]["status"] for c in CASES}
        summary = _bench_summary(bench)
        if any(s == "failed" for s in statuses.values()):
            bad = [f"{c}: {cases[c].get('reason', '')}" for c in CASES if statuses[c] == "failed"]
            self.record(name, "failed", "; ".join(bad)[:600], res["seconds"], bench=bench, summary=summary,
                        log_tail=res["output"][-3000:])
        elif all(s == "skipped" for s in statuses.values()):
            self.record(name, "skipped", "; ".join(f"{c}: {cases[c].get('reason', '')}" for c in CASES)[:600],
                        res["seconds"], bench=bench, summary=summary)
        else:
            skipped = [f"{c} skipped: {cases[c].get('reason', '')}" for c in CASES if statuses[c] == "skipped"]
            self.record(name, "ok", "; ".join([summary] + skipped)[:800], res["seconds"], bench=bench,
                        summary=summary)

    def part_capture(self, name: str, limit: float) -> None:
        self._speed_part(name, limit)

    def part_gc(self, name: str, limit: float) -> None:
        self._speed_part(name, limit)

    def part_batch(self, name: str, limit: float) -> None:
        self._speed_part(name, limit)

    def _speed_part(self, name: str, limit: float) -> None:
        """One of bench/gpu_speed.py's parts in a child process; every case gets a status in the report."""
        result_file = self.tmp / f"{name}.json"
        cmd = [self.python(), str(Path(__file__).resolve()), "--speed", name, "--result", str(result_file),
               "--deadline", f"{time.time() + limit - 5:.1f}"] + (["--dry-run"] if self.dry else [])
        res = self.run_child(name, cmd, limit)
        try:
            speed = json.loads(result_file.read_text())
        except (OSError, ValueError):
            speed = {"families": {}}
        cases = {f"{family}/{case}": c for family, sub in speed.get("families", {}).items()
                 for case, c in sub.get("cases", {}).items()}
        failed = [f"{k}: {c.get('reason', '')}" for k, c in cases.items() if c.get("status") == "failed"]
        ok = [k for k, c in cases.items() if c.get("status") == "ok"]
        summaries = {family: sub.get("summary") for family, sub in speed.get("families", {}).items()
                     if sub.get("summary")}
        detail = "; ".join(f"{family}: {json.dumps(summary)}" for family, summary in summaries.items())
        if res["timed_out"] or res["rc"] != 0 or failed:
            why = "; ".join(failed) or (f"time limit {limit:.0f} s reached" if res["timed_out"] else
                                        f"exit {res['rc']}: {_last_line(res['output'])}")
            self.record(name, "failed", why[:800], res["seconds"], speed=speed, log_tail=res["output"][-3000:])
        elif not ok:
            self.record(name, "skipped", "no case ran (time budget)", res["seconds"], speed=speed)
        else:
            self.record(name, "ok", (f"{len(ok)} cases ok; " + detail)[:900], res["seconds"], speed=speed)

    def part_profile(self, name: str, limit: float) -> None:
        tables = self.out / "gpu_profile.txt"
        cmd = [self.python(), str(Path(__file__).resolve()), "--profile", "sd15", "--result", str(tables)] + \
            (["--dry-run"] if self.dry else [])
        res = self.run_child(name, cmd, limit)
        ok = res["rc"] == 0 and tables.exists()
        first = tables.read_text(encoding="utf-8").splitlines()[:3] if tables.exists() else []
        self.record(name, "ok" if ok else "failed", " | ".join(first) if ok else
                    f"exit {res['rc']}{' (time limit)' if res['timed_out'] else ''}", res["seconds"],
                    log_tail=res["output"][-2000:])

    def part_demo(self, name: str, limit: float) -> None:
        demo_dir = self.tmp / "demo"
        cmd = [self.python(), "-m", "core.cli", "demo", "--output", str(demo_dir),
               "--device", "cpu" if self.dry else "cuda"] + (["--steps", "2"] if self.dry else [])
        res = self.run_child(name, cmd, limit)
        started = _first_event(demo_dir, "started")
        ratio = _demo_ratio(res["output"])
        extra = {"started": started, "colour_distance_ratio": ratio, "exit_status": res["rc"]}
        device = (started or {}).get("device", "")
        if res["timed_out"]:
            self.record(name, "failed", f"time limit {limit:.0f} s reached", res["seconds"],
                        log_tail=res["output"][-3000:], **extra)
        elif res["rc"] != 0:
            self.record(name, "failed", f"exit {res['rc']}: {_last_line(res['output'])}", res["seconds"],
                        log_tail=res["output"][-3000:], **extra)
        elif not self.dry and not device.startswith("cuda"):
            self.record(name, "failed", f"the demo trained on {device or 'an unknown device'}, not the GPU",
                        res["seconds"], log_tail=res["output"][-3000:], **extra)
        else:
            precision = (started or {}).get("precision") or (started or {}).get("dtype") or "?"
            self.record(name, "ok", f"trained on {device} ({precision}); colour distance after/before "
                                    f"{ratio if ratio is not None else '?'}", res["seconds"], **extra)

    # ---- the report ------------------------------------------------------------------------------------------------
    def write_report(self) -> None:
        finished = _utc_now()
        report = {
            "tool": "bench/gpu_check.py", "dry_run": self.dry, "started": self.started_at, "finished": finished,
            "wall_s": round(time.monotonic() - self.t0, 1), "budget_s": self.budget, "environment": self.env_info,
            "parts": {name: self.parts.get(name, {"status": "skipped", "reason": "not reached"}) for name in PARTS},
            "notes": self.notes,
        }
        _atomic_write(self.json_path, json.dumps(report, indent=2, default=str) + "\n")
        _atomic_write(self.md_path, _markdown(report))


# =====================================================================================================================
# The benchmark child: `--bench sd15|sdxl`
# =====================================================================================================================
class Skip(Exception):
    """A case that cannot run here, with the reason."""


def bench_main(family: str, dry: bool, result_path: Path, deadline: float | None) -> int:
    import torch

    spec = dict((DRY_BENCH if dry else BENCH)[family])
    device = torch.device("cpu" if dry else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    precision = "fp32" if dry else "bf16"
    if device.type == "cuda" and torch.cuda.get_device_capability() < (8, 0):
        precision = "fp16"  # no native bf16: the trainer's auto choice
    result = {"family": family, "device": str(device), "size": spec["size"], "precision": precision, "batch_size": 1,
              "gradient_checkpointing": spec["gc"], "warmup_steps": spec["warmup"], "timed_steps": spec["timed"],
              "torch": torch.__version__, "cases": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    data = _make_images(Path(tempfile.mkdtemp(prefix="tiwiz-gpu-bench-")) / "data", 4, spec["size"])
    result["rounds"] = spec.get("rounds", 1)
    for round_no, case in ((r, c) for r in range(result["rounds"]) for c in CASES):
        if round_no and result["cases"].get(case, {}).get("status") != "ok":
            continue
        if deadline is not None and time.time() > deadline - (20 if not dry else 5):
            if not round_no:
                result["cases"][case] = {"status": "skipped", "reason": "time budget"}
            _atomic_write(result_path, json.dumps(result, indent=2))
            continue
        print(f"--- {family} {case} (round {round_no + 1}) ---", flush=True)
        t0 = time.monotonic()
        try:
            runner = {"floor": bench_floor, "ours": bench_ours, "diffusers": bench_diffusers}[case]
            entry = runner(family, device, precision, spec, data, dry)
            entry = {"status": "ok", **entry}
        except Skip as exc:
            entry = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # OOM, a CUDA error, a bug: recorded, and the next case still runs
            entry = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:400]}",
                     "traceback": traceback.format_exc()[-2500:]}
            traceback.print_exc()
        entry["seconds"] = round(time.monotonic() - t0, 1)
        result["cases"][case] = _merge_round(result["cases"].get(case), entry, spec)
        print(f"{case}: {json.dumps({k: v for k, v in entry.items() if k != 'traceback'})}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _atomic_write(result_path, json.dumps(result, indent=2))
    if spec.get("paired") and (deadline is None or time.time() < deadline - (25 if not dry else 5)):
        print(f"--- {family} paired ours/floor ---", flush=True)
        try:
            result["paired"] = bench_paired(family, device, precision, {**spec, "timed": spec["paired"]}, data, dry)
        except Exception as exc:  # reported beside the cases; never loses them
            result["paired"] = {"status": "failed", "reason": f"{type(exc).__name__}: {str(exc)[:400]}"}
            traceback.print_exc()
        print(f"paired: {json.dumps(result['paired'])}", flush=True)
        _atomic_write(result_path, json.dumps(result, indent=2))
    return 0


def _merge_round(before: dict | None, entry: dict, spec: dict) -> dict:
    """One case's result over rounds: s/step is the median of every round's timed steps, each round's median kept;
    peaks are the largest. A later round that fails is recorded beside the earlier ones."""
    if before is None or entry["status"] != "ok":
        if before is not None:
            before.setdefault("failed_rounds", []).append(entry.get("reason", ""))
            return before
        return {**entry, "round_s_per_step": [entry["s_per_step"]]} if entry["status"] == "ok" else entry
    timed = [t for e in (before, entry) for t in _timed_steps(e, spec)]
    merged = {**before, "steps": before["steps"] + entry["steps"], "seconds": before["seconds"] + entry["seconds"],
              "s_per_step": round(statistics.median(timed), 4),
              "round_s_per_step": before["round_s_per_step"] + [entry["s_per_step"]]}
    for key in ("peak_gib", "peak_steps_gib"):
        if key in entry:
            merged[key] = max(before.get(key, 0), entry[key])
    return merged


def _timed_steps(entry: dict, spec: dict) -> list[float]:
    per_round = spec["warmup"] + spec["timed"]
    steps = entry["steps"]
    return [t for i, t in enumerate(steps) if i % per_round >= spec["warmup"]] or steps


def profile_main(family: str, dry: bool, tables: Path) -> int:
    """Where the time of one step goes: the floor and our step under torch.profiler (CPU and CUDA time per op, and
    the device-busy time per step against the wall time), then our step under cProfile (Python hot spots)."""
    import cProfile
    import io
    import pstats

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    spec = dict((DRY_BENCH if dry else BENCH)[family])
    spec["timed"] = max(spec["timed"], 3 if dry else 10)
    device = torch.device("cpu" if dry else "cuda")
    precision = "fp32" if dry else "bf16"
    data = _make_images(Path(tempfile.mkdtemp(prefix="tiwiz-gpu-profile-")) / "data", 4, spec["size"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    lines, sort = [], "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"

    class Window:  # cProfile has enable/disable where the profiler has start/stop
        def __init__(self, prof):
            self.prof = prof

        def start(self):
            self.prof.enable()

        def stop(self):
            self.prof.disable()

    for case, runner in (("floor", bench_floor), ("ours", bench_ours)):
        prof = profile(activities=activities, record_shapes=False)
        out = runner(family, device, precision, spec, data, dry, window=prof)
        events = prof.key_averages()
        # kernels only: a CPU op's row also carries the device time of the kernels it launched (the table's footer
        # sums the same way), so summing every row counted each kernel twice
        device_us = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU)
        wall = out["s_per_step"]
        lines.append(f"{case}: {wall:.4f} s/step (median under the profiler), device busy "
                     f"{device_us / 1e6 / spec['timed']:.4f} s/step")
        lines.append(f"\n===== {case}: top ops by {sort} =====")
        lines.append(events.table(sort_by=sort, row_limit=30, max_name_column_width=70))
        lines.append(f"\n===== {case}: top ops by self_cpu_time_total =====")
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70))
        gc.collect()
    cprof = cProfile.Profile()
    out = bench_ours(family, device, precision, spec, data, dry, window=Window(cprof))
    text = io.StringIO()
    stats = pstats.Stats(cprof, stream=text)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)
    lines.append(f"\nours under cProfile: {out['s_per_step']:.4f} s/step\n{text.getvalue()}")
    summary = [line for line in lines if line.startswith(("floor:", "ours:"))]
    _atomic_write(tables, "\n".join(summary + [""] + lines) + "\n")
    print("\n".join(summary), flush=True)
    return 0


# ---- model building ----------------------------------------------------------------------------------------------
def build_model(family: str, device, dry: bool):
    """A LoadedModel with random weights, built directly on `device` (a full-size model initialises in seconds on a
    GPU). Dry run: the tiny SD1 / SDXL test architectures."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models import builtin
    from core.models.device import enable_sdpa
    from core.models.loaded_model import LoadedModel

    torch.manual_seed(0)
    te2 = tok2 = None
    with torch.device(device):
        if dry and family == "sd15":
            te, unet, vae, sched, tok = builtin.build_tiny_components(0)
        elif dry:
            if not hasattr(builtin, "build_tiny_sdxl_components"):
                raise Skip("no tiny SDXL builder (core.models.builtin.build_tiny_sdxl_components) in this tree")
            parts = builtin.build_tiny_sdxl_components(0)
            te, te2, unet, vae, sched = (parts[k] for k in ("text_encoder", "text_encoder_2", "unet", "vae",
                                                             "scheduler"))
            tok, tok2 = parts["tokenizer"], parts["tokenizer_2"]
        else:
            from core.models.configs import bundled_config

            cfg_family = "sd1" if family == "sd15" else "sdxl"
            unet = UNet2DConditionModel.from_config(bundled_config(cfg_family, "unet"))
            vae = AutoencoderKL.from_config(bundled_config(cfg_family, "vae"))
            te = CLIPTextModel(CLIPTextConfig(**_te_config(bundled_config(cfg_family, "text_encoder"))))
            sched = None  # built below, on the CPU like the loader's
            if family == "sdxl":
                te2 = CLIPTextModelWithProjection(CLIPTextConfig(**_te_config(bundled_config("sdxl",
                                                                                               "text_encoder_2"))))
            tok = builtin.load_bundled_tokenizer() if hasattr(builtin, "load_bundled_tokenizer") else \
                __import__("transformers").CLIPTokenizer.from_pretrained(builtin.TOKENIZER_DIR)
            if family == "sdxl":
                tok2 = builtin.load_bundled_tokenizer(second=True) if hasattr(builtin, "load_bundled_tokenizer") \
                    else tok
    if sched is None:
        from core.models.configs import bundled_config

        sched = DDPMScheduler.from_config(bundled_config("sd1" if family == "sd15" else "sdxl", "scheduler"))
    modules = [m for m in (te, te2, unet, vae) if m is not None]
    for module in modules:
        module.to(device).eval()
        module.requires_grad_(False)
    if device.type == "cuda":
        enable_sdpa(unet, vae)
    kwargs = {}
    if te2 is not None:
        kwargs = dict(tokenizer_2=tok2, text_encoder_2=te2)
    return LoadedModel(tokenizer=tok, text_encoder=te, unet=unet, vae=vae, noise_scheduler=sched,
                       family="sd1" if family == "sd15" else "sdxl", prediction_type="epsilon",
                       path=Path(f"{family}-random"), name=f"{family}-random", device=device, _short_hash="random",
                       **kwargs)


def _frozen_dtype(family: str, device, precision: str):
    """The dtype of the frozen weights in our trainer: bf16 on CUDA under bf16 autocast, every family (the trainer
    loads them so: half the memory, no per-forward weight casts), else fp32. The floor uses the same, so "ours /
    floor" compares like with like (the report's note gives each case's weight dtype)."""
    import torch

    if device.type == "cuda" and precision == "bf16":
        return torch.bfloat16
    return torch.float32


def _cast(model, dtype) -> None:
    for module in (model.text_encoder, getattr(model, "text_encoder_2", None), model.unet, model.vae):
        if module is not None and next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)


def _te_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures",)}


def _encode(model, ids, ids2=None, size: int = 0):
    """(encoder_hidden_states, added_cond_kwargs) as SD1 / SDXL pipelines condition the UNet."""
    import torch

    text_encoder_2 = getattr(model, "text_encoder_2", None)
    if text_encoder_2 is None or ids2 is None:
        return model.text_encoder(ids)[0], None
    out1 = model.text_encoder(ids, output_hidden_states=True)
    out2 = text_encoder_2(ids2, output_hidden_states=True)
    cond = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=cond.dtype, device=cond.device)
    return cond, {"text_embeds": out2.text_embeds, "time_ids": time_ids.repeat(ids.shape[0], 1)}


def _tokens(tokenizer, prompts, device):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _autocast(device, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


class _Memory:
    """Peak torch.cuda.max_memory_allocated: over the whole case (model build included) and over the steps."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.setup_peak = 0
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def steps_begin(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.setup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict:
        import torch

        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        steps = torch.cuda.max_memory_allocated()
        return {"peak_gib": round(max(steps, self.setup_peak) / 2**30, 2), "peak_steps_gib": round(steps / 2**30, 2)}


def _timed(step, device, spec, window=None) -> dict:
    """Median wall time of the steps after warm-up. `window` (a profiler, `start()`/`stop()`) covers the timed steps."""
    times = []
    for i in range(spec["warmup"] + spec["timed"]):
        if window is not None and i == spec["warmup"]:
            window.start()
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if window is not None:
        window.stop()
    return _timing(times, spec)


def _timing(times: list[float], spec) -> dict:
    timed = times[spec["warmup"]:] or times
    return {"s_per_step": round(statistics.median(timed), 4), "steps": [round(t, 4) for t in times]}


# ---- the three cases -----------------------------------------------------------------------------------------------
def bench_floor(family, device, precision, spec, data, dry, window=None) -> dict:
    """Text encoder(s) + UNet forward and backward on fixed inputs, weights frozen, gradients flowing into the token
    embeddings' output (what TI needs); no data loading, VAE, optimizer or bookkeeping."""
    mem = _Memory(device)
    step, finish = _floor_stepper(family, device, precision, spec, dry)
    mem.steps_begin()
    out = _timed(step, device, spec, window)
    out["weight_dtype"] = finish()
    out.update(mem.report())
    return out


def _floor_stepper(family, device, precision, spec, dry):
    """(step, finish): one floor step on its own model; finish() removes the hooks and names the weights' dtype."""
    import torch
    import torch.nn.functional as F

    model = build_model(family, device, dry)
    weights = _frozen_dtype(family, device, precision)
    _cast(model, weights)
    if spec["gc"]:
        model.unet.enable_gradient_checkpointing()
    encoders = [e for e in (model.text_encoder, getattr(model, "text_encoder_2", None)) if e is not None]
    handles = [e.get_input_embeddings().register_forward_hook(lambda mod, args, out: out.detach().requires_grad_(True))
               for e in encoders]
    prompt = ["a painting of a thing, red, blue, art by someone"]
    ids = _tokens(model.tokenizer, prompt, device)
    ids2 = _tokens(model.tokenizer_2, prompt, device) if len(encoders) > 1 else None
    gen = torch.Generator().manual_seed(0)
    latent = spec["size"] // 8
    latents = torch.randn(1, 4, latent, latent, generator=gen).to(device)
    noise = torch.randn(latents.shape, generator=gen).to(device)
    t = torch.tensor([500], device=device)
    noisy = model.noise_scheduler.add_noise(latents, noise, t)

    def step():
        with _autocast(device, precision):
            cond, added = _encode(model, ids, ids2, spec["size"])
            pred = model.unet(noisy, t, cond, added_cond_kwargs=added).sample
        F.mse_loss(pred.float(), noise.float()).backward()

    def finish() -> str:
        for h in handles:
            h.remove()
        return str(weights).replace("torch.", "")

    return step, finish


def bench_paired(family, device, precision, spec, data, dry) -> dict:
    """Our step and a floor step back to back, N times: after each of our steps (at its step event) one floor step
    runs on a second model, its time left out of ours. Each ratio compares two steps a few milliseconds apart, so a
    drift of the machine between cases (a launch-bound step follows the host's speed) cancels out."""
    step, finish = _floor_stepper(family, device, precision, spec, dry)
    floor_times = []

    def between():
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        floor_times.append(time.perf_counter() - t0)

    ours = bench_ours(family, device, precision, spec, data, dry, between=between)
    finish()
    pairs = list(zip(ours["steps"], floor_times))[spec["warmup"]:]
    ratios = [o / f for o, f in pairs]
    return {"pairs": len(pairs), "ours_s_per_step": round(statistics.median(o for o, _ in pairs), 4),
            "floor_s_per_step": round(statistics.median(f for _, f in pairs), 4),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}


def bench_ours(family, device, precision, spec, data, dry, window=None, between=None) -> dict:
    """The real Trainer on the random-weight model (handed to it in place of loading a file), timed from its step
    events: everything one of our steps costs, bookkeeping included. The eager step (compile off: the `capture` part
    measures the captured ones), checkpointing as the spec says (forced, so the comparison with the floor holds)."""
    from bench.gpu_speed import run_ours

    settings = {"compile": "off", "gradient_checkpointing": "on" if spec["gc"] else "off"}
    out = run_ours(family, device, precision, spec["size"], data, warmup=spec["warmup"], timed=spec["timed"], dry=dry,
                   settings=settings, window=window, between=between,
                   window_steps=(spec["warmup"] + 1, spec["warmup"] + spec["timed"]) if window is not None else None)
    for key in ("compile", "memory_plan", "losses"):
        out.pop(key, None)
    if spec["gc"]:
        out["gradient_checkpointing_by"] = "trainer (gradient_checkpointing = 'on')"
    return out


def bench_diffusers(family, device, precision, spec, data, dry) -> dict:
    """The step of diffusers' examples/textual_inversion/textual_inversion.py (SDXL: textual_inversion_sdxl.py, both
    encoders), written here (no vendored code): per step a PIL image load/resize/flip and tokenisation as its
    dataset does, VAE encode, noise, text encoder(s) under autocast (accelerate's mixed precision), UNet in the
    weight dtype, MSE, AdamW over the whole token-embedding matrix (weight decay 1e-2), then every non-placeholder row
    restored from the original copy. $DIFFUSERS_TI_SCRIPT is not run here: it needs a hub model and accelerate."""
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    mem = _Memory(device)
    model = build_model(family, device, dry)
    weight_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model.unet.to(dtype=weight_dtype)
    model.vae.to(dtype=weight_dtype)
    pairs = [(model.tokenizer, model.text_encoder)]
    if getattr(model, "text_encoder_2", None) is not None:
        pairs.append((model.tokenizer_2, model.text_encoder_2))
    placeholders = [f"<gpu-check-{i}>" for i in range(VECTORS)]
    trainable, restore = [], []
    for tokenizer, encoder in pairs:
        text_model = getattr(encoder, "text_model", encoder)  # transformers 5.2x flattened CLIPTextModel
        tokenizer.add_tokens(placeholders)
        ids = tokenizer.convert_tokens_to_ids(placeholders)
        init_id = tokenizer.encode("thing", add_special_tokens=False)[0]
        encoder.resize_token_embeddings(len(tokenizer))
        weight = encoder.get_input_embeddings().weight
        with torch.no_grad():
            for i in ids:
                weight[i] = weight[init_id].clone()
        text_model.encoder.requires_grad_(False)
        text_model.final_layer_norm.requires_grad_(False)
        text_model.embeddings.position_embedding.requires_grad_(False)
        weight.requires_grad_(True)
        encoder.train()
        if spec["gc"]:
            encoder.gradient_checkpointing_enable()
        keep = torch.ones((len(tokenizer),), dtype=torch.bool)
        keep[min(ids): max(ids) + 1] = False
        restore.append((encoder, keep, weight.data.clone()))
        trainable.append(weight)
    if spec["gc"]:
        model.unet.train()
        model.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(trainable, lr=5e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # "constant"
    images = sorted(Path(data).glob("*.png"))
    size = spec["size"]
    rng = random.Random(0)
    sched = model.noise_scheduler
    placeholder_text = " ".join(placeholders)
    templates = ["a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "a good photo of a {}"]

    def example(i):
        with Image.open(images[i % len(images)]) as im:
            img = im.convert("RGB")
        img = img.resize((size, size), resample=Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.array(img).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1), rng.choice(templates).format(placeholder_text)

    counter = [0]

    def step():
        pixels, text = example(counter[0])
        counter[0] += 1
        pixels = pixels.unsqueeze(0).to(device)
        ids = [_tokens(tok, [text], device) for tok, _ in pairs]
        latents = model.vae.encode(pixels.to(dtype=weight_dtype)).latent_dist.sample().detach()
        latents = latents * model.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = sched.add_noise(latents, noise, timesteps.long())
        with _autocast(device, precision):  # accelerate wraps the prepared text encoder(s) in autocast
            cond, added = _encode(model, ids[0], ids[1] if len(ids) > 1 else None, size)
        cond = cond.to(dtype=weight_dtype)
        if added is not None:
            added = {k: v.to(dtype=weight_dtype) for k, v in added.items()}
        pred = model.unet(noisy, timesteps, cond, added_cond_kwargs=added).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for encoder, keep, original in restore:
                encoder.get_input_embeddings().weight[keep] = original[keep]
        loss.detach().item()  # the script logs the loss every step

    mem.steps_begin()
    out = _timed(step, device, spec)
    out.update(mem.report())
    out["weight_dtype"] = str(weight_dtype).replace("torch.", "")
    del model, optimizer, restore, trainable
    return out


def _make_images(folder: Path, n: int, size: int) -> Path:
    from bench.train_speed import make_images

    return make_images(folder, n, size)


# =====================================================================================================================
# Helpers
# =====================================================================================================================
def _bench_summary(bench: dict) -> str:
    cases = bench.get("cases", {})
    s = {c: cases.get(c, {}).get("s_per_step") for c in CASES}
    parts = [f"{bench.get('size', '?')} px {bench.get('precision', '?')}"]
    for c in CASES:
        if s[c] is not None:
            mem = cases[c].get("peak_gib")
            parts.append(f"{c} {s[c]:.4f} s/step" + (f" ({mem} GiB)" if mem is not None else ""))
    if s["ours"] and s["floor"]:
        parts.append(f"ours/floor {s['ours'] / s['floor']:.2f}")
    if s["ours"] and s["diffusers"]:
        parts.append(f"diffusers/ours {s['diffusers'] / s['ours']:.2f}")
    paired = bench.get("paired") or {}
    if "ratio_median" in paired:
        parts.append(f"paired ours/floor {paired['ratio_median']:.2f} over {paired['pairs']} back-to-back pairs "
                     f"(range {paired['ratio_range'][0]:.2f}-{paired['ratio_range'][1]:.2f})")
    return ", ".join(parts)


def _markdown(report: dict) -> str:
    env = report.get("environment", {})
    mods = env.get("modules", {})
    smi = env.get("nvidia_smi") or {}
    lines = [
        f"# tiwiz GPU check{' (dry run, CPU)' if report['dry_run'] else ''}",
        "",
        f"- started {report['started']}, finished {report['finished']}, {report['wall_s']} s of a "
        f"{report['budget_s']:.0f} s budget",
        f"- GPU: {env.get('gpu') or smi.get('name') or 'none'}"
        + (f", compute capability {'.'.join(map(str, env['capability']))}" if env.get("capability") else "")
        + (f", {env['gpu_memory_gib']} GiB" if env.get("gpu_memory_gib") else "")
        + (f", driver {smi['driver']}" if smi.get("driver") else ""),
        f"- python {env.get('python', '?')}, torch {mods.get('torch')} (CUDA {env.get('torch_cuda')}), diffusers "
        f"{mods.get('diffusers')}, transformers {mods.get('transformers')}; {env.get('cpu_count')} CPUs, load "
        f"average {env.get('load_avg')}",
        "",
        "| part | status | seconds | detail |",
        "| --- | --- | --- | --- |",
    ]
    for name, part in report["parts"].items():
        detail = str(part.get("reason", "")).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', 0)} | {detail} |")
    rows = []
    for name in ("sd15", "sdxl"):
        bench = report["parts"].get(name, {}).get("bench")
        if not bench:
            continue
        cases = bench.get("cases", {})
        floor = cases.get("floor", {}).get("s_per_step")
        for case in CASES:
            c = cases.get(case, {})
            s = c.get("s_per_step")
            ratio = f"{s / floor:.2f}" if s and floor else ""
            mem = c.get("peak_gib", "")
            mem_steps = c.get("peak_steps_gib", "")
            note = c.get("reason") or (f"weights {c['weight_dtype']}" if c.get("weight_dtype") else "")
            if len(c.get("round_s_per_step", [])) > 1:
                note += "; rounds " + " / ".join(f"{r:.4f}" for r in c["round_s_per_step"])
            note = str(note).replace("|", "/")[:200]
            rows.append(f"| {name} | {bench.get('size')} px {bench.get('precision')}"
                        f"{' GC' if bench.get('gradient_checkpointing') else ''} | {case} | {c.get('status')} | "
                        f"{s if s is not None else ''} | {ratio} | {mem} | {mem_steps} | {note} |")
    if rows:
        lines += ["", "| model | setting | case | status | s/step (median) | x floor | peak GiB | peak GiB in steps "
                      "| note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + rows
    speed_rows = []
    for name in SPEED:
        speed = report["parts"].get(name, {}).get("speed")
        if speed:
            from bench.gpu_speed import speed_rows as rows_of

            speed_rows += rows_of(name, speed)
    if speed_rows:
        lines += ["", "| part | setting | case | status | figures |", "| --- | --- | --- | --- | --- |"] + speed_rows
    tests = report["parts"].get("tests", {}).get("tests") or []
    if tests:
        lines += ["", "| CUDA test | outcome | seconds | properties |", "| --- | --- | --- | --- |"]
        for t in tests:
            props = ", ".join(f"{k}={v}" for k, v in t.get("properties", {}).items())
            lines.append(f"| {t['name']} | {t['outcome']} | {t['seconds']} | {props} |")
    if report.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _read_junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (el.get("message") or "")[:300]
                break
        counts[outcome] = counts.get(outcome, 0) + 1
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"name": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time") or 0), 2), "message": message, "properties": props})
    return {"tests": tests, "counts": counts}


def _first_event(folder: Path, kind: str) -> dict | None:
    for events in sorted(folder.rglob("events.jsonl")) if folder.is_dir() else []:
        for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") == kind:
                return event
    return None


def _demo_ratio(output: str) -> float | None:
    import re

    m = re.search(r"\(ratio ([0-9.]+)\)", output)
    return float(m.group(1)) if m else None


def _last_line(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else ""


def _nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if not out:
        return {}
    fields = [f.strip() for f in out[0].split(",")]
    return dict(zip(("name", "driver", "memory"), fields))


def _load_avg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


if __name__ == "__main__":
    sys.exit(main())
