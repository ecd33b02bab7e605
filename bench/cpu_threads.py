"""CPU step time of tiwiz against a diffusers-example-equivalent step, under the same competing load, interleaved.

Each case runs in its own subprocess (OpenMP reads its environment once), in rounds: A B C ... A B C ..., so every
case sees the same load. Prints the median seconds per step (wall and CPU time) per case and the load average.

Cases (the tiny random demo model, 128 px, batch 1, 4 vectors, fp32 CPU):
  tiwiz-N        our Trainer with threads = N (torch's default on this machine is the core count)
  tiwiz-auto     our Trainer with threads = 0: the free cores (core.training.threads)
  tiwiz-N-passive  threads = N with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning)
  diffusers-N    the step of diffusers' examples/textual_inversion/textual_inversion.py: VAE-encode the batch, text
                 encoder forward with the whole token-embedding matrix trainable, UNet forward/backward, AdamW over
                 the whole matrix, then restore every row but the placeholders'; torch threads = N

    python bench/cpu_threads.py                              # all cases, 2 rounds, under whatever load there is
    python bench/cpu_threads.py --load 2 --rounds 3          # plus 2 busy-looping processes of our own
  sd15-N         our Trainer on the SD1.5 architecture with random weights (bench/train_speed.py) at 256 px,
                 threads = N (6 steps a round, 2 of them warm-up): where bf16 has real matrix work to speed up
  CASE-bf16      CASE under bf16 autocast on CPU (needs avx512_bf16 or amx_bf16), frozen weights fp32 (the trainer's)
  CASE-bf16w     the same with the frozen weights held in bf16 too (as on CUDA): the alternative the trainer refuses

Every tiwiz/sd15 case trains with the same seed, so its step losses are comparable case by case: the summary gives
the mean step loss and the largest step-loss difference from the fp32 twin (bf16 must still learn the same thing).

    python bench/cpu_threads.py --precision bf16             # also the bf16 twin of each tiwiz/sd15 case
    python bench/cpu_threads.py --cases tiwiz-1,sd15-1 --precision bf16 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIZE = 128
SD15_SIZE = 256
SD15_STEPS, SD15_WARMUP = 6, 2


def _images(folder: Path, n: int = 4, size: int = SIZE) -> Path:
    from bench.train_speed import make_images

    return make_images(folder, n, size)


def tiwiz_steps(model: Path | str, data: Path, out: Path, steps: int, threads: int, precision: str,
                size: int = SIZE) -> tuple[list[tuple], list[float], str]:
    """(wall, CPU) seconds of each step, each step's loss and the precision the Started event names."""
    from core.events import CallbackSink
    from core.training.config import TrainConfig
    from core.training.trainer import Trainer

    stamps, losses, started = [], [], []

    def on_event(event):
        kind = event.TYPE if hasattr(event, "TYPE") else event["type"]
        if kind in ("step", "started"):
            stamps.append((time.perf_counter(), time.process_time()))
        if kind == "step":
            losses.append(event.loss if hasattr(event, "loss") else event["loss"])
        elif kind == "started":
            started.append(event.precision if hasattr(event, "precision") else event["precision"])

    if precision == "bf16w":  # bf16 frozen weights under bf16 autocast: the trainer keeps fp32 on CPU
        import torch

        import core.training.session as session

        session.frozen_weights_dtype = lambda device, precision: torch.bfloat16
    fields = dict(model=str(model), data=str(data), name="benchemb", steps=steps, width=size, height=size,
                  save_every=0, preview_every=0, validate_every=0, device="cpu", vectors=4, init_text="a thing",
                  threads=threads, holdout=0, precision="fp32" if precision == "fp32" else "bf16")
    Trainer(TrainConfig.from_dict(fields), out, CallbackSink(on_event)).run()
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])], losses, started[0]


def sd15_steps(data: Path, out: Path, steps: int, threads: int, precision: str) -> tuple[list[tuple], list[float], str]:
    """tiwiz_steps on the SD1.5 architecture with random weights at SD15_SIZE px (built in memory)."""
    import torch

    import core.models.loader as loader
    from bench.train_speed import build_sd15

    torch.set_num_threads(threads)
    model = build_sd15(torch.device("cpu"))
    if precision == "bf16w":
        model.unet.to(torch.bfloat16)
        model.text_encoder.to(torch.bfloat16)
        model.vae.to(torch.bfloat16)
    loader.load_model = lambda *a, **k: model  # the trainer loads "the model" through this function
    return tiwiz_steps("sd15-random", data, out, steps, threads, precision, SD15_SIZE)


def diffusers_steps(model: Path, data: Path, steps: int, threads: int) -> list[tuple]:
    """The per-step work of diffusers' textual_inversion.py (no accelerate wrapper, which adds nothing on CPU)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    from core.models.loaded_model import bundled_tokenizer

    torch.set_num_threads(threads)
    tok_dir = model / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else bundled_tokenizer("sd1")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    vae = AutoencoderKL.from_pretrained(model / "vae")
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    sched = DDPMScheduler.from_pretrained(model / "scheduler")
    placeholders = [f"<thing-{i}>" for i in range(4)]
    tokenizer.add_tokens(placeholders)
    ids_new = tokenizer.convert_tokens_to_ids(placeholders)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)  # the example freezes everything but the token embeddings
    text_encoder.train()
    embeds = text_encoder.get_input_embeddings().weight
    embeds.requires_grad_(True)
    optimizer = torch.optim.AdamW([embeds], lr=5e-4)
    orig = embeds.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[min(ids_new): max(ids_new) + 1] = False
    files = sorted(data.glob("*.png"))
    prompt = "a photo of a " + " ".join(placeholders)
    ids = tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    out = []
    for step in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        im = np.asarray(Image.open(files[step % len(files)]).convert("RGB"), dtype=np.float32) / 127.5 - 1
        pixels = torch.from_numpy(im).permute(2, 0, 1).unsqueeze(0)
        latents = vae.encode(pixels).latent_dist.sample().detach() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (1,))
        noisy = sched.add_noise(latents, noise, t)
        cond = text_encoder(ids)[0]
        pred = unet(noisy, t, cond).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            embeds[keep] = orig[keep]
        out.append((time.perf_counter() - t0, time.process_time() - c0))
    return out


def run_case(case: str, steps: int, model: Path, data: Path) -> dict:
    import torch

    parts = case.split("-")
    kind, threads = parts[0], parts[1]
    precision = parts[2] if len(parts) > 2 and parts[2] in ("bf16", "bf16w") else "fp32"
    losses, started, warmup = [], "fp32", 3
    with tempfile.TemporaryDirectory(prefix="tiwiz-threads-") as tmp:
        if kind == "tiwiz":
            n = 0 if threads == "auto" else int(threads)
            times, losses, started = tiwiz_steps(model, data, Path(tmp) / "out", steps, n, precision)
        elif kind == "sd15":
            sd_data = _images(Path(tmp) / "data", size=SD15_SIZE)
            times, losses, started = sd15_steps(sd_data, Path(tmp) / "out", SD15_STEPS, int(threads), precision)
            warmup = SD15_WARMUP
        else:
            times = diffusers_steps(model, data, steps, int(threads))
    timed = times[warmup:]
    return {"case": case, "s_per_step": statistics.median(t for t, _ in timed),
            "cpu_s_per_step": statistics.median(c for _, c in timed), "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0], "losses": losses, "precision": started}


def _busy() -> None:
    while True:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--cases", default="tiwiz-2,tiwiz-1,tiwiz-auto,tiwiz-2-passive,diffusers-2,diffusers-1")
    p.add_argument("--steps", type=int, default=13, help="steps per case and round (3 of them warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--load", type=int, default=0, help="busy-looping processes of our own to add")
    p.add_argument("--precision", choices=["bf16"], help="also run the bf16 twin (CASE-bf16) of each tiwiz/sd15 case")
    p.add_argument("--bf16-weights", action="store_true", help="with --precision bf16: also CASE-bf16w (bf16 "
                                                               "frozen weights)")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.steps, Path(args.model), Path(args.data))))
        return 0
    cases = []
    for case in args.cases.split(","):
        cases.append(case)
        if args.precision and case.split("-")[0] in ("tiwiz", "sd15") and not case.endswith("-passive"):
            cases += [f"{case}-bf16"] + ([f"{case}-bf16w"] if args.bf16_weights else [])
    busy = []
    results: dict[str, list[dict]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="tiwiz-threads-") as tmp:
        from core.models.builtin import write_random_demo_model

        model = write_random_demo_model(Path(tmp) / "model")
        data = _images(Path(tmp) / "data")
        for _ in range(args.load):
            busy.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        try:
            for r in range(args.rounds):
                for case in cases:
                    env = dict(os.environ)
                    env.pop("OMP_NUM_THREADS", None)
                    if case.endswith("-passive"):
                        env["OMP_WAIT_POLICY"] = "PASSIVE"
                    cmd = [sys.executable, __file__, "--case", case.replace("-passive", ""), "--steps",
                           str(args.steps), "--model", str(model), "--data", str(data)]
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        print(f"{case}: failed\n{proc.stderr[-1500:]}", flush=True)
                        continue
                    res = json.loads(proc.stdout.strip().splitlines()[-1])
                    results[case].append(res)
                    print(f"round {r + 1} {case:18s} {res['s_per_step']:.4f} s/step (CPU {res['cpu_s_per_step']:.4f}"
                          f" s, {res['threads']} threads), load {res['load']:.1f}", flush=True)
        finally:
            for proc in busy:
                proc.kill()
    print(f"\nsummary ({os.cpu_count()} cores, {args.load} own busy processes; medians over rounds):")
    base = results.get("diffusers-2") or []
    base_s = statistics.median(r["s_per_step"] for r in base) if base else None
    for case, rows in results.items():
        if not rows:
            continue
        s = statistics.median(r["s_per_step"] for r in rows)
        cpu = statistics.median(r["cpu_s_per_step"] for r in rows)
        load = statistics.mean(r["load"] for r in rows)
        rel = f", {s / base_s:.2f}x diffusers-2" if base_s else ""
        twin = results.get(case.rsplit("-", 1)[0]) if case.endswith(("-bf16", "-bf16w")) else None
        if twin:
            rel += f", {statistics.median(r['s_per_step'] for r in twin) / s:.2f}x the speed of fp32"
        print(f"  {case:18s} {s:.4f} s/step, CPU {cpu:.4f} s{rel}, load avg {load:.1f}")
        if rows[0].get("losses"):
            losses = rows[0]["losses"]
            line = f"      {rows[0]['precision']}: mean step loss {statistics.mean(losses):.5f}"
            if twin and twin[0].get("losses"):
                diffs = [abs(a - b) for a, b in zip(losses, twin[0]["losses"])]
                line += (f", largest step-loss difference from fp32 {max(diffs):.5f} (fp32 mean "
                         f"{statistics.mean(twin[0]['losses']):.5f})")
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
