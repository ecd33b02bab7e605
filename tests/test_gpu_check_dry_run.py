"""bench/gpu_check.py --dry-run: the GPU proof script runs every part on CPU at tiny sizes and reports each one
(a real subprocess, real report files)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
PARTS = ("setup", "tests", "capture", "gc", "batch", "sd15", "demo", "sdxl", "profile")
CASES = ("floor", "ours", "diffusers")


def _run(tmp_path, *args, timeout=900):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    report = json.loads((out / "gpu_check.json").read_text())
    markdown = (out / "gpu_check.md").read_text()
    return proc, report, markdown, out


SPEED = ("capture", "gc", "batch")  # bench/gpu_speed.py: a run of their own (the two together outlast a budget)


@pytest.mark.slow
def test_dry_run_runs_every_part_and_reports_it(tmp_path):
    proc, report, markdown, out = _run(tmp_path, "--parts", ",".join(p for p in PARTS[1:] if p not in SPEED))
    parts = report["parts"]
    assert proc.returncode == 0, (proc.stdout[-3000:], {k: (v["status"], v["reason"]) for k, v in parts.items()})
    assert report["dry_run"] is True and list(parts) == list(PARTS)
    for name in SPEED:
        assert parts[name]["status"] == "skipped" and "--parts" in parts[name]["reason"]
    for name, part in parts.items():
        assert part["status"] in ("ok", "skipped") and isinstance(part["seconds"], (int, float)), (name, part)
        if part["status"] != "ok":
            assert part["reason"], name
    assert parts["setup"]["status"] == "ok"
    # no CUDA here: every CUDA test is collected and skipped, none fails
    counts = parts["tests"]["counts"]
    assert parts["tests"]["status"] == "ok" and counts["skipped"] >= 7 and counts["failed"] == counts["error"] == 0
    assert {t["name"].split("::")[0] for t in parts["tests"]["tests"]} >= {"test_cuda_training", "test_cuda_blip",
                                                                          "test_cuda_capture"}
    for family in ("sd15", "sdxl"):
        bench = parts[family].get("bench")
        if parts[family]["status"] == "skipped":
            continue
        assert bench["size"] == 64 and bench["precision"] == "fp32"
        assert bench["gradient_checkpointing"] is (family == "sdxl")
        for case in CASES:
            c = bench["cases"][case]
            assert c["status"] in ("ok", "skipped"), (family, case, c)
            if c["status"] == "ok":
                rounds = bench["rounds"]
                assert c["s_per_step"] > 0 and len(c["round_s_per_step"]) == rounds
                assert len(c["steps"]) == (bench["warmup_steps"] + bench["timed_steps"]) * rounds
            else:
                assert c["reason"]
    assert parts["sd15"]["status"] == "ok" and all(parts["sd15"]["bench"]["cases"][c]["status"] == "ok" for c in CASES)
    assert parts["demo"]["status"] == "ok" and parts["demo"]["started"]["device"] == "cpu"
    assert "| part | status | seconds | detail |" in markdown
    for name in PARTS:
        assert f"| {name} | {parts[name]['status']} |" in markdown
    assert "| sd15 | 64 px fp32 | ours | ok |" in markdown
    assert (out / "gpu_check.log").is_file()
    assert parts["sd15"]["bench"]["rounds"] == 2  # cases interleaved: floor, ours, diffusers, floor, ...
    paired = parts["sd15"]["bench"]["paired"]  # our steps and floor steps back to back
    assert paired["pairs"] == 3 and paired["ratio_range"][0] <= paired["ratio_median"] <= paired["ratio_range"][1]
    assert paired["ours_s_per_step"] > 0 and paired["floor_s_per_step"] > 0 and "paired ours/floor" in markdown
    # the profile: torch.profiler op tables of the floor and our step, then cProfile of ours
    profile = (out / "gpu_profile.txt").read_text()
    assert parts["profile"]["status"] == "ok" and profile.startswith("floor: ")
    assert "===== ours: top ops by self_cpu_time_total =====" in profile and "aten::" in profile
    assert "ours under cProfile" in profile and "(train_step)" in profile  # core.training.update.train_step


@pytest.mark.slow
def test_dry_run_of_the_speed_parts(tmp_path):
    """capture, gc and batch (bench/gpu_speed.py) at dry-run sizes: every case ran, with the figures the GPU run
    reports."""
    proc, report, markdown, out = _run(tmp_path, "--parts", ",".join(SPEED))
    parts = report["parts"]
    assert proc.returncode == 0, (proc.stdout[-3000:], {k: (v["status"], v["reason"]) for k, v in parts.items()})
    capture = parts["capture"]["speed"]["families"]["sd15"]
    assert parts["capture"]["status"] == "ok", parts["capture"]["reason"]
    cases = capture["cases"]
    assert set(cases) == {"eager", "cuda_graph", "compile", "compile_cached"}
    assert all(c["status"] == "ok" and c["s_per_step"] > 0 for c in cases.values()), cases
    assert cases["eager"]["mode"] == "eager" and "kernel_s_per_step" in cases["eager"]  # None: no kernels on a CPU
    for name in ("cuda_graph", "compile", "compile_cached"):  # no CUDA graphs on a CPU: the captured code path
        assert cases[name]["impl"] == "static" and cases[name]["mode"] == "static"
    # the captured code path trains exactly like the eager step: the same losses, step for step
    assert cases["cuda_graph"]["losses"] == cases["eager"]["losses"]
    assert capture["summary"]["eager_s_per_step"] == cases["eager"]["s_per_step"]
    assert "speedup" in capture["summary"]["cuda_graph"]
    gc = parts["gc"]["speed"]["families"]["sdxl"]
    assert parts["gc"]["status"] == "ok", parts["gc"]["reason"]
    assert all(gc["cases"][c]["status"] == "ok" for c in ("floor_off", "ours_auto", "floor_on", "ours_on")), gc
    assert gc["cases"]["ours_auto"]["gradient_checkpointing"] is False  # auto on a CPU: off
    assert gc["cases"]["ours_on"]["gradient_checkpointing"] is True
    assert {"auto_x_floor_off", "on_x_floor_on", "auto_choice", "auto_reason"} <= set(gc["summary"])
    batch = parts["batch"]["speed"]["families"]
    assert parts["batch"]["status"] == "ok", parts["batch"]["reason"]
    for family in ("sd15", "sdxl"):
        for name in ("batch1", "batch2"):
            case = batch[family]["cases"][name]
            assert case["status"] == "ok" and case["images_per_s"] > 0, (family, name, case)
    assert "| capture | sd15 64 px fp32 | cuda_graph | ok |" in markdown
    assert "| batch | sdxl 64 px fp32 | batch2 | ok |" in markdown


def test_time_budget_skips_parts_with_the_reason(tmp_path):
    proc, report, markdown, out = _run(tmp_path, "--budget", "1", "--parts", "sd15,demo", timeout=300)
    parts = report["parts"]
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert parts["setup"]["status"] == "ok"
    for name in ("sd15", "demo"):
        assert parts[name]["status"] == "skipped" and "time budget" in parts[name]["reason"]
    for name in ("tests", "sdxl", "capture", "gc", "batch"):
        assert parts[name]["status"] == "skipped" and "--parts" in parts[name]["reason"]
    assert "| sd15 | skipped |" in markdown
