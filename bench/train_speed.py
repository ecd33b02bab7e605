"""Training speed: seconds per step (median of steady steps) and peak memory, against the floor.

The floor is the text encoder plus UNet forward and backward on the same inputs (batch 1, 77 tokens, the same
latent size), with no data loading, VAE, optimizer or bookkeeping. Our step / floor is what the loop costs on top.

Cases (each runs in its own subprocess so peak memory is its own):
  tiny       the tiny demo model at 128 px, fp32, CPU
  sd15       the SD1.5 architecture with random weights (UNet 320/640/1280/1280 xattn 768, VAE 128/256/512/512,
             CLIP-L 12 layers, built from the bundled configs) at 256 px, fp32, CPU   (target: ratio <= 1.10)
  sd15-cuda  the same at 512 px, bf16 autocast, CUDA (skipped without a GPU)
  sdxl       the SDXL architecture with random weights from the bundled configs (UNet 320/640/1280 with 1/2/10
             transformer blocks, xattn 2048, text-time embedding; CLIP-L + OpenCLIP bigG with projection; SDXL VAE)
             at 256 px on CPU, weights in bf16 (2.6B + 0.8B parameters: fp32 would need ~14 GB of RAM)
  sdxl-cuda  the same at 1024 px, bf16 weights and autocast, UNet gradient checkpointing (as the trainer does for
             SDXL on CUDA), CUDA (skipped without a GPU); reports the CUDA peak memory (target: fits 24 GB)

The floor uses every text encoder of the architecture (SDXL: both, with the pooled projection and time ids) and the
same UNet settings (gradient checkpointing) as the trainer.

Other code (bench/gpu_check.py) calls `run_case(arch="sdxl", size=1024, precision="bf16", device="cuda", steps=N)`,
which returns the same dict this script prints.

    python bench/train_speed.py                     # tiny, then sd15, then sd15-cuda if CUDA is there
    python bench/train_speed.py --case tiny --steps 20
    OMP_NUM_THREADS=1 python bench/train_speed.py   # on a shared, oversubscribed machine (2 threads spin there)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    "tiny": dict(arch="tiny", size=128, device="cpu", warmup=3, timed=15),
    "sd15": dict(arch="sd15", size=256, device="cpu", warmup=2, timed=3),
    "sd15-cuda": dict(arch="sd15", size=512, device="cuda", warmup=3, timed=10),
    "sdxl": dict(arch="sdxl", size=256, device="cpu", precision="bf16", warmup=1, timed=2),
    "sdxl-cuda": dict(arch="sdxl", size=1024, device="cuda", precision="bf16", warmup=3, timed=10),
}


def make_images(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i:03d}-thing.png")
        (folder / f"{i:03d}-thing.txt").write_text("a thing, red, blue")
    return folder


def build_sd15(device):
    """The SD1.5 architecture with random weights, as a LoadedModel (built in memory, not written to disk)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from core.models.configs import bundled_config
    from core.models.builtin import TOKENIZER_DIR
    from core.models.device import enable_sdpa
    from core.models.loaded_model import LoadedModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(bundled_config("sd1", "unet"))
    vae = AutoencoderKL.from_config(bundled_config("sd1", "vae"))
    te_config = {k: v for k, v in bundled_config("sd1", "text_encoder").items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_config))
    for module in (unet, vae, text_encoder):
        module.to(device).eval()
    if device.type == "cuda":
        enable_sdpa(unet, vae)
    return LoadedModel(
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR), text_encoder=text_encoder, unet=unet, vae=vae,
        noise_scheduler=DDPMScheduler.from_config(bundled_config("sd1", "scheduler")), family="sd1",
        prediction_type="epsilon", path=Path("sd15-random"), name="sd15-random", device=device,
        _short_hash="random",
    )


def build_sdxl(device, dtype):
    """The SDXL architecture with random weights, built straight in `dtype` on `device` (no fp32 copy on the way)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models.builtin import load_bundled_tokenizer
    from core.models.configs import bundled_config
    from core.models.device import enable_sdpa
    from core.models.loaded_model import LoadedModel

    def text_config(name):
        return CLIPTextConfig(**{k: v for k, v in bundled_config("sdxl", name).items()
                                 if k not in ("architectures", "model_type")})

    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(bundled_config("sdxl", "unet"))
            vae = AutoencoderKL.from_config(bundled_config("sdxl", "vae"))
            text_encoder = CLIPTextModel(text_config("text_encoder"))
            text_encoder_2 = CLIPTextModelWithProjection(text_config("text_encoder_2"))
    finally:
        torch.set_default_dtype(before)
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.to(device=device).eval()  # built in dtype already
    if device.type == "cuda":
        enable_sdpa(unet, vae)
    return LoadedModel(
        tokenizer=load_bundled_tokenizer(), text_encoder=text_encoder, unet=unet, vae=vae,
        noise_scheduler=DDPMScheduler.from_config(bundled_config("sdxl", "scheduler")), family="sdxl",
        prediction_type="epsilon", path=Path("sdxl-random"), name="sdxl-random", device=device,
        _short_hash="random", tokenizer_2=load_bundled_tokenizer(second=True), text_encoder_2=text_encoder_2,
    )


def measure_trainer(spec: dict, model_path: str, data: Path, out: Path, steps: int) -> tuple[list[float], list[float]]:
    """(wall, cpu) seconds of each training step, from the trainer's own step events."""
    from core.training.config import TrainConfig
    from core.events import CallbackSink
    from core.training.trainer import Trainer

    stamps = []
    config = TrainConfig.from_dict(dict(
        model=model_path, data=str(data), name="benchemb", steps=steps, width=spec["size"], height=spec["size"],
        save_every=0, preview_every=0, validate_every=0, device=spec["device"], vectors=4, init_text="a thing",
        template="style_filewords", gradient_checkpointing=spec.get("gradient_checkpointing", "auto"),
        precision=spec.get("precision", "auto") if spec["device"] == "cuda" else "auto"))

    def on_event(event):
        if not isinstance(event, dict):  # typed events (core.runs.run_events)
            event = event.to_dict() if hasattr(event, "to_dict") else {"type": getattr(event, "type", "")}
        if event["type"] == "step":
            sync(spec["device"])
            stamps.append((time.perf_counter(), time.process_time()))
        elif event["type"] == "started":
            stamps.append((time.perf_counter(), time.process_time()))

    Trainer(config, out, CallbackSink(on_event)).run()
    return ([b[0] - a[0] for a, b in zip(stamps, stamps[1:])], [b[1] - a[1] for a, b in zip(stamps, stamps[1:])])


def measure_floor(model, size: int, steps: int, precision_pref: str = "auto") -> tuple[list[float], list[float]]:
    """Every text encoder + UNet forward and backward, gradients flowing into the token embeddings as in TI (SDXL:
    both encoders' penultimate states, the pooled projection and time ids, as core.training.conditioning does)."""
    import torch
    import torch.nn.functional as F

    from core.models.device import precision_for
    from core.training.conditioning import encode_prompts

    device = model.device
    precision = precision_for(device, precision_pref if device.type == "cuda" else "auto")
    encoders = [model.text_encoder] + ([model.text_encoder_2] if model.text_encoder_2 is not None else [])
    for module in model.modules:  # TI trains no weights: no weight gradients
        module.requires_grad_(False)
    handles = [enc.get_input_embeddings().register_forward_hook(lambda mod, args, out: out.detach().requires_grad_(True))
               for enc in encoders]
    unet_dtype = next(model.unet.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=gen).to(device)
    noise = torch.randn(latents.shape, generator=gen).to(device)
    t = torch.tensor([500], device=device)
    noisy = model.noise_scheduler.add_noise(latents, noise, t)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)
    times, cpu = [], []
    for _ in range(steps):
        sync(device.type)
        t0, c0 = time.perf_counter(), time.process_time()
        with precision.autocast():
            cond, added = encode_prompts(model, ["a painting of a thing, red, blue, art by someone"], device,
                                         time_ids if model.family == "sdxl" else None)
            if added:
                added = {k: v.to(unet_dtype) for k, v in added.items()}
            pred = model.unet(noisy.to(unet_dtype), t, cond.to(unet_dtype), added_cond_kwargs=added).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        sync(device.type)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    for handle in handles:
        handle.remove()
    return times, cpu


def sync(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.synchronize()


def run_case(case: str | None = None, steps_override: int | None = None, *, arch: str | None = None,
             size: int | None = None, precision: str = "auto", device: str | None = None, steps: int | None = None,
             warmup: int | None = None, gradient_checkpointing: str = "auto") -> dict:
    """One case, by name (`run_case("sdxl")`) or by its parts (`run_case(arch="sdxl", size=1024, precision="bf16",
    device="cuda", steps=10)`; arch is tiny, sd15 or sdxl). Returns the figures as a dict."""
    import torch

    import core.models.loader as loader
    from core.models.device import precision_for

    if case is not None:
        spec = dict(CASES[case])
    else:
        base = next((dict(v) for v in CASES.values() if v["arch"] == arch and v["device"] == (device or "cpu")), None)
        spec = base or dict(arch=arch, size=size or 256, device=device or "cpu", warmup=2, timed=3)
        spec.update(size=size or spec["size"], precision=precision)
        case = f"{arch}-{spec['device']}-{spec['size']}"
    if warmup is not None:
        spec["warmup"] = warmup
    spec["gradient_checkpointing"] = gradient_checkpointing  # auto: on for SDXL on CUDA, as the trainer does
    warmup, timed = spec["warmup"], steps or steps_override or spec["timed"]
    if spec["device"] == "cuda" and not torch.cuda.is_available():
        return {"case": case, "skipped": "no CUDA device"}
    device = torch.device(spec["device"])
    with tempfile.TemporaryDirectory(prefix="tiwiz-bench-") as tmp:
        tmp = Path(tmp)
        data = make_images(tmp / "data", 4, spec["size"])
        if spec["arch"] == "tiny":
            from core.models.builtin import write_random_demo_model

            model_path = str(write_random_demo_model(tmp / "model"))
            model = None
        else:
            t0 = time.perf_counter()
            if spec["arch"] == "sdxl":
                model = build_sdxl(device, torch.bfloat16 if spec.get("precision") == "bf16" else torch.float32)
            else:
                model = build_sd15(device)
            print(f"  built the {spec['arch']} architecture in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            loader.load_model = lambda *a, **k: model  # the trainer loads "the model" through this function
            model_path = f"{spec['arch']}-random"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step_times, step_cpu = measure_trainer(spec, model_path, data, tmp / "out", warmup + timed)
        ours_mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        if model is None:  # the tiny model: load it the same way for the floor
            model = loader.load_model(model_path, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        floor_times, floor_cpu = measure_floor(model, spec["size"], warmup + timed, spec.get("precision", "auto"))
        floor_mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    ours, floor = statistics.median(step_times[warmup:]), statistics.median(floor_times[warmup:])
    ours_cpu, floor_cpu = statistics.median(step_cpu[warmup:]), statistics.median(floor_cpu[warmup:])
    result = {
        "case": case, "arch": spec["arch"], "size": spec["size"], "device": spec["device"],
        # autocast dtype (bf16 only where the GPU has it natively); weights: the frozen modules' dtype
        "dtype": precision_for(device, spec.get("precision", "auto") if device.type == "cuda" else "auto").name,
        "weights": str(next(model.unet.parameters()).dtype).replace("torch.", ""),
        "gradient_checkpointing": bool(getattr(model.unet, "is_gradient_checkpointing", False)),
        "timed_steps": timed, "s_per_step": round(ours, 4), "floor_s": round(floor, 4),
        "ratio": round(ours / floor, 3), "cpu_s_per_step": round(ours_cpu, 4), "floor_cpu_s": round(floor_cpu, 4),
        "cpu_ratio": round(ours_cpu / floor_cpu, 3), "load_avg": round(os.getloadavg()[0], 1), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
    }
    if ours_mem is not None:
        result["cuda_max_allocated_gib"] = round(ours_mem / 2**30, 2)
        result["floor_cuda_max_allocated_gib"] = round(floor_mem / 2**30, 2)
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process (default: all, each in "
                                                              "a subprocess)")
    parser.add_argument("--steps", type=int, help="timed steps (after warmup)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per case")
    parser.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), default="auto",
                        help="the trainer's gradient_checkpointing for the case (auto: on for SDXL on CUDA)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.case:
        result = run_case(args.case, args.steps, gradient_checkpointing=args.gradient_checkpointing)
        print(json.dumps(result))
        return 0
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case] + (["--steps", str(args.steps)] if args.steps else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = (proc.stdout.strip().splitlines() or ["{}"])[-1]
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr[-2000:]}")
            continue
        result = json.loads(line)
        if args.json:
            print(line)
        elif "skipped" in result:
            print(f"{case:10s} skipped ({result['skipped']})")
        else:
            mem = f"peak RSS {result['peak_rss_gib']} GiB"
            if "cuda_max_allocated_gib" in result:
                mem += f", CUDA max allocated {result['cuda_max_allocated_gib']} GiB ({result['gpu']})"
            print(f"{case:10s} {result['size']} px {result['dtype']} {result['device']}: {result['s_per_step']:.4f} s/step, "
                  f"floor {result['floor_s']:.4f} s, ratio {result['ratio']:.3f} (CPU time: {result['cpu_s_per_step']:.4f} vs "
                  f"{result['floor_cpu_s']:.4f} s, ratio {result['cpu_ratio']:.3f}), {mem}, load avg {result['load_avg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
