"""Train the tiny "shapes world" model from scratch (issue 6) and write it as the shipped weights.

    python tools/train_world.py --out core/data/world_model            # VAE, then UNet (~25 min on 2 idle cores)
    python tools/train_world.py --out /tmp/wm --stage unet --vae-from /tmp/wm   # UNet only, reusing a VAE
    python tools/train_world.py --out /tmp/wm --stage unet --vae-from /tmp/wm --te-lr 0   # text encoder frozen

The result is an SD1-shaped diffusers folder without the tokenizer (`tiwiz demo-model` adds the bundled CLIP
tokenizer): AutoencoderKL (4 blocks, 64 px -> 8x8x4 latents as in SD), UNet2DConditionModel conditioned on a
CLIPTextModel (hidden 32, 2 layers) trained jointly with it (or kept frozen at random weights with --te-lr 0), the
SD1.5 noise schedule, epsilon prediction. Captions are drawn from core.world.shapes.CAPTION_TEMPLATES. The held-out concept
(core.world.shapes) is never part of training. Deterministic for a given seed, machine and thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.world import shapes  # noqa: E402

IMAGE_SIZE = 64
CAPTION_DROPOUT = 0.10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_components(seed: int):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 64), layers_per_block=1, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=IMAGE_SIZE,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, steps_offset=1, prediction_type="epsilon",
    )
    return text_encoder, unet, vae, scheduler


def to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def batches(seed: int, batch_size: int):
    stream = shapes.world_samples(seed, 10**9, size=IMAGE_SIZE)
    while True:
        items = [next(stream) for _ in range(batch_size)]
        yield to_tensor([i[0] for i in items]), [i[1] for i in items]


def train_vae(vae, steps: int, seed: int, batch_size: int = 16, lr: float = 2e-3, kl_weight: float = 1e-4,
              crop: int = 32):
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    data = batches(seed + 100, batch_size)
    vae.train()
    start = time.time()
    for step in range(1, steps + 1):
        x, _ = next(data)
        if crop:  # the VAE is convolutional: random crops train it at a fraction of the cost
            i, j = (int(v) for v in torch.randint(0, (IMAGE_SIZE - crop) // 8 + 1, (2,), generator=gen) * 8)
            x = x[:, :, i:i + crop, j:j + crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        kl = post.kl().mean() / z[0].numel()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.step()
        if step % 25 == 0 or step == steps:
            log(f"vae step {step}/{steps} rec {rec.item():.4f} kl {kl.item():.3f} ({time.time() - start:.0f}s)")
    vae.eval()
    return vae


@torch.no_grad()
def set_scaling_factor(vae, seed: int) -> float:
    x, _ = next(batches(seed + 200, 256))
    z = vae.encode(x).latent_dist.mean
    factor = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=round(factor, 5))
    mse = F.mse_loss(vae.decode(z).sample, x).item()
    log(f"vae scaling_factor {factor:.4f}; held-out reconstruction MSE {mse:.5f}")
    return factor


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return torch.cat([text_encoder(ids[i:i + 128])[0] for i in range(0, len(ids), 128)])


def train_unet(unet, vae, text_encoder, tokenizer, scheduler, steps: int, seed: int, n_images: int,
               batch_size: int = 32, lr: float = 1e-3, ema_decay: float = 0.998, out: Path | None = None,
               te_lr: float = 0.0, warmup: int = 100, noise_offset: float = 0.0):
    """Train the UNet (and, with te_lr > 0, the text encoder jointly) on the world; returns the EMA UNet. With a
    trained text encoder its EMA is saved too, so the saved pair always matches.

    Caption ids: 0 is the empty caption; spec i's phrasing k (core.world.shapes.CAPTION_TEMPLATES) is 1 + i * K + k."""
    specs = shapes.all_specs()
    n_var = len(shapes.CAPTION_TEMPLATES)
    captions = [""] + [v for spec in specs for v in shapes.caption_variants(*spec)]
    index = {spec: i for i, spec in enumerate(specs)}
    variant_weights = torch.tensor(shapes.CAPTION_WEIGHTS, dtype=torch.float64)
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    train_te = te_lr > 0
    cond = None if train_te else encode_prompts(text_encoder, tokenizer, captions)
    log(f"encoded {len(captions)} captions" + (" (text encoder trained jointly)" if train_te else ""))

    stream = shapes.world_samples(seed + 300, n_images, size=IMAGE_SIZE)
    means, stds, caps = [], [], []
    chunk = []
    for item in stream:
        chunk.append(item)
        if len(chunk) == 64:
            with torch.no_grad():
                post = vae.encode(to_tensor([c[0] for c in chunk])).latent_dist
            means.append(post.mean)
            stds.append(post.std)
            caps += [index[(c[2].color, c[2].shape, c[2].background)] for c in chunk]
            chunk = []
    means, stds, caps = torch.cat(means), torch.cat(stds), torch.tensor(caps)
    log(f"encoded {len(caps)} training latents")

    sf = vae.config.scaling_factor
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    weight_t = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 weighting for epsilon prediction
    ema = copy.deepcopy(unet).requires_grad_(False)
    groups = [{"params": list(unet.parameters()), "base_lr": lr, "weight_decay": 1e-2}]
    if train_te:
        text_encoder.requires_grad_(True).train()
        ema_te = copy.deepcopy(text_encoder).requires_grad_(False).eval()
        # no weight decay: it would shrink every unused token's embedding (and so the TI init vectors)
        groups.append({"params": list(text_encoder.parameters()), "base_lr": te_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr)
    trained = [p for g in groups for p in g["params"]]
    gen = torch.Generator().manual_seed(seed + 400)
    unet.train()
    start = time.time()
    running = None
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(caps), (batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * sf
        variant = torch.multinomial(variant_weights, batch_size, replacement=True, generator=gen)
        c = 1 + caps[idx] * n_var + variant
        c[torch.rand(batch_size, generator=gen) < CAPTION_DROPOUT] = 0
        noise = torch.randn(z.shape, generator=gen)
        if noise_offset:
            noise = noise + noise_offset * torch.randn(z.shape[:2] + (1, 1), generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(z, noise, t)
        enc = text_encoder(ids[c])[0] if train_te else cond[c]
        pred = unet(noisy, t, enc).sample
        loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * weight_t[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * min(1.0, step / warmup) * (
                0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        opt.step()
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
            if train_te:
                for pe, p in zip(ema_te.parameters(), text_encoder.parameters()):
                    pe.lerp_(p, 1 - d)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == steps:
            log(f"unet step {step}/{steps} loss {running:.4f} ({time.time() - start:.0f}s)")
        if out is not None and (step % 500 == 0 or step == steps):
            ema.save_pretrained(out / "unet", safe_serialization=True)
            if train_te:
                ema_te.save_pretrained(out / "text_encoder", safe_serialization=True)
            log(f"saved EMA unet{' and text encoder' if train_te else ''} at step {step}")
    return ema


def save_common(out: Path, text_encoder, vae, scheduler) -> None:
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stage", choices=["all", "vae", "unet"], default="all")
    p.add_argument("--vae-from", type=Path, help="reuse the VAE from this folder (stage unet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--unet-steps", type=int, default=9000)
    p.add_argument("--images", type=int, default=20000, help="fixed training images for the UNet stage")
    p.add_argument("--unet-from", type=Path, help="continue the UNet and text encoder from this folder instead of "
                   "from scratch (stage unet; use with --vae-from)")
    p.add_argument("--lr", type=float, default=1e-3, help="UNet peak learning rate (cosine to 5%%)")
    p.add_argument("--te-lr", type=float, default=5e-4,
                   help="peak lr of the text encoder, trained jointly with the UNet; 0 keeps it frozen (random)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--noise-offset", type=float, default=0.0,
                   help="offset noise for the UNet stage (a per-image, per-channel constant added to the noise); "
                        "0.3 was tried and made the demo's textual inversion worse (bench/RESULTS.md)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from core.models.builtin import TOKENIZER_DIR

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text_encoder, unet, vae, scheduler = build_components(args.seed)
    text_encoder.requires_grad_(False).eval()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.stage in ("all", "vae"):
        vae = train_vae(vae, args.vae_steps, args.seed)
        set_scaling_factor(vae, args.seed)
        save_common(out, text_encoder, vae, scheduler)
        log(f"VAE done in {time.time() - t0:.0f}s")
    else:
        # the VAE from --vae-from; the text encoder fresh (as in a full run) unless continuing with --unet-from
        vae = AutoencoderKL.from_pretrained((args.vae_from or out) / "vae")
        if args.unet_from:
            text_encoder = CLIPTextModel.from_pretrained(args.unet_from / "text_encoder")
        save_common(out, text_encoder, vae, scheduler)
    vae.requires_grad_(False).eval()
    if args.unet_from:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(args.unet_from / "unet")
        log(f"continuing the UNet from {args.unet_from}")
    if args.stage in ("all", "unet"):
        train_unet(unet, vae, text_encoder, tokenizer, scheduler, args.unet_steps, args.seed, args.images, out=out,
                   lr=args.lr, te_lr=args.te_lr, warmup=args.warmup, noise_offset=args.noise_offset)
        log(f"all done in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
