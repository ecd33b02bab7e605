"""The validation loss: the plain diffusion loss over fixed images x fixed timesteps x fixed noise, with fixed
prompts, so it is comparable along a run and never perturbs training (its own seeded generators). The same loss on
the held-out images (never trained on) rises when the embedding overfits. With ema_decay it measures the average,
the vectors a checkpoint saves.
"""

from __future__ import annotations

import random

import torch

from core.runs import run_events as ev
from core.training.templates import render
from core.training.update import batch_loss

VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)
TRAIN_SEED_OFFSET = 1_000_003
HOLDOUT_SEED_OFFSET = 2_000_029


def fixed_set(config, dataset, indices: list[int], template, placeholder: str, family: str,
              seed_offset: int = TRAIN_SEED_OFFSET) -> list:
    """Up to validation_images images of `indices`, spread evenly, each as (latents, noise, timesteps, prompt,
    SDXL time ids or None) over VALIDATION_TIMESTEPS; the prompt is the template's first line."""
    gen = torch.Generator().manual_seed(config.seed + seed_offset)
    n = min(config.validation_images, len(indices))
    picks = sorted({indices[round(k * (len(indices) - 1) / max(1, n - 1))] for k in range(n)})
    timesteps = torch.tensor(VALIDATION_TIMESTEPS, dtype=torch.long)
    out = []
    for i in picks:
        item = dataset.items[i]
        latents = item.mean.unsqueeze(0).repeat(len(timesteps), 1, 1, 1)
        noise = torch.randn(latents.shape, generator=gen)
        prompt = render(template.lines[0], placeholder, item.caption, rng=random.Random(0))
        time_ids = dataset.time_ids([i] * len(timesteps)) if family == "sdxl" else None
        out.append((latents, noise, timesteps, prompt, time_ids))
    return out


def validate(s) -> float:
    """The validation loss of session `s` at s.step, and the held-out one: folded into s.watch (the auto-stop rule,
    the best step) and emitted as a `validation` event. Returns the validation loss."""
    with s.averaged():
        val = fixed_loss(s, s.validation_set)
        holdout = fixed_loss(s, s.holdout_set) if s.holdout_set else None
        editability = s.editability.measure() if s.editability is not None else None
    w = s.watch.observe(s.step, val, holdout)
    best_step, _, best_basis = s.watch.best(s.out_dir, s.name)
    s.sink.emit(ev.Validation(step=s.step, val_loss=val, holdout_loss=holdout, best_step=best_step,
                              best_basis=best_basis, auto_stop_ratio=w.ratio, auto_stop_watched=w.watched,
                              auto_stop_window=w.window, auto_stop_threshold=w.threshold,
                              auto_stop_fired_at=w.fired_at, editability=editability))
    return val


def fixed_loss(s, fixed: list) -> float:
    total = 0.0
    with torch.no_grad():
        for latents, noise, timesteps, prompt, time_ids in fixed:
            loss = batch_loss(s, [], None, prompts=[prompt] * len(timesteps), latents=latents, noise=noise,
                              timesteps=timesteps, time_ids=time_ids)
            total += float(loss)
    return total / len(fixed)
