"""One optimizer update of the trained vectors, and the diffusion loss that it and the validation compute.

- One update = grad_accum micro-batches of batch_size images, their losses' gradients summed, clipped, one step.
  A template line is drawn for every image of every micro-batch (`prompt_for`).
- The data order (`DataFeed`) and the prompts draw from the run's `random.Random`; noise and timesteps from its torch
  Generator. Both are saved in state/latest.pt, so a resumed run draws exactly what an uninterrupted one would.
- Nothing here waits for the GPU: the summed loss comes back as a tensor, read once by `core.training.guard`.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from core.training import conditioning  # token_ids through the module: a test counts the tokenisations
from core.training.loss_weights import timestep_weights
from core.training.templates import render

STEP_ABANDONED = object()  # train_step's answer when a stop came between micro-batches
TOKEN_CACHE_SIZE = 20_000  # distinct prompts whose token ids are kept (per tokenizer)


class DataFeed:
    """Shuffled epochs of batches over the training images (`indices`), each batch of one image size."""

    def __init__(self, dataset, indices: list[int], batch_size: int, rng: random.Random) -> None:
        self.dataset, self.indices, self.batch_size, self.rng = dataset, indices, batch_size, rng
        self.batches: list[list[int]] = []
        self.pos = 0
        self.epoch = 0

    def next_batch(self) -> list[int]:
        if self.pos >= len(self.batches):
            self.epoch += 1
            self.batches = self.dataset.epoch_batches(self.rng, self.batch_size, self.indices)
            self.pos = 0
        batch = self.batches[self.pos]
        self.pos += 1
        return batch

    def position(self, generator) -> tuple:
        """Where the data and the noise stand, to go back to when a step is abandoned (get_state costs ~1 ms)."""
        return generator.get_state(), self.rng.getstate(), self.batches, self.pos, self.epoch

    def rewind(self, position: tuple, generator) -> None:
        state, rng_state, self.batches, self.pos, self.epoch = position
        generator.set_state(state)
        self.rng.setstate(rng_state)


class TokenCache:
    """Token ids of prompts, tokenised once per distinct prompt (a template x caption set repeats its prompts every
    epoch) and copied without waiting for the GPU. `seen` notes, on the host, whether a placeholder was among them
    since it was last cleared."""

    def __init__(self, placeholder: str) -> None:
        self.placeholder = placeholder
        self.seen = False
        self._cache: dict = {}  # id(tokenizer) -> ({prompt: ids}, placeholder ids)

    def __call__(self, tokenizer, prompts: list[str], device):
        if id(tokenizer) not in self._cache:
            self._cache[id(tokenizer)] = ({}, torch.tensor(tokenizer.convert_tokens_to_ids(self.placeholder.split())))
        cache, placeholder_ids = self._cache[id(tokenizer)]
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            if len(cache) + len(missing) > TOKEN_CACHE_SIZE:  # tag shuffling makes prompts unbounded
                cache.clear()
            cache.update(zip(missing, conditioning.token_ids(tokenizer, missing, "cpu")))
        ids = torch.stack([cache[p] for p in prompts])
        if torch.isin(ids, placeholder_ids).any():
            self.seen = True
        return ids.to(device, non_blocking=True)


def train_step(s, lr: float, stop_between):
    """Accumulate grad_accum micro-batches of session `s` and apply one update. Returns the summed loss as a tensor
    on the device, or None (nothing applied) if a micro-batch before the last was not finite, or STEP_ABANDONED when
    `stop_between()` asked to stop between micro-batches (the step is undone as if it never began). A non-finite last
    micro-batch is applied and then undone by the guard, like a step that leaves non-finite vectors."""
    cfg, optimizer = s.config, s.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = None
    s.tokens.seen = False
    position = s.feed.position(s.generator) if cfg.grad_accum > 1 else None
    for micro in range(cfg.grad_accum):
        if micro and stop_between():
            optimizer.zero_grad(set_to_none=True)
            s.feed.rewind(position, s.generator)
            return STEP_ABANDONED
        loss = batch_loss(s, s.feed.next_batch(), s.generator, weighted=True) / cfg.grad_accum
        if micro < cfg.grad_accum - 1 and not torch.isfinite(loss):  # between micro-batches: a read is due anyway
            optimizer.zero_grad(set_to_none=True)
            return None
        if loss.requires_grad:  # not when no prompt held the trigger (on the CPU the splice then does nothing)
            s.scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if not s.tokens.seen:
        # No prompt of this step held the trigger (a template line without [name]): nothing to learn, and the
        # splice (which on a GPU does not test for that, to avoid a wait) left zero gradients; apply nothing.
        optimizer.zero_grad(set_to_none=True)
        return total
    s.scaler.unscale_(optimizer)
    s.norms.project_gradient(s.vectors)  # norm_mode preserve: only the direction trains
    if cfg.clip_grad != "none":
        limit = s.clip_schedule.rate_at(s.step)
        if cfg.clip_grad == "value":
            torch.nn.utils.clip_grad_value_([s.vectors], limit)
        else:
            torch.nn.utils.clip_grad_norm_([s.vectors], limit)
    s.scaler.step(optimizer)
    s.scaler.update()
    s.norms.apply(s.vectors)  # norm_mode clamp/preserve: back inside the rule
    return total


def batch_loss(s, indices: list[int], generator, prompts: list[str] | None = None, latents=None, noise=None,
               timesteps=None, weighted: bool = False, time_ids=None, tokenize=None):
    """Diffusion loss for one batch. Training draws noise/timesteps from `generator` and applies `loss_weighting`
    (weighted=True); validation passes its own and stays plain MSE, so it is comparable across settings.
    `tokenize(tokenizer, prompts, device)` replaces the token cache (a captured step reads its static buffers)."""
    cfg, model, sched = s.config, s.model, s.model.noise_scheduler
    if latents is None:
        latents = s.dataset.latents(indices, generator)
    if prompts is None:
        prompts = [prompt_for(s, i) for i in indices]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator)
        if cfg.noise_offset:  # training only: validation passes its own fixed noise
            offset = torch.randn(latents.shape[:2] + (1, 1), generator=generator)
            noise = noise + cfg.noise_offset * offset
    if timesteps is None:
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    # Pageable host memory is staged at once, so non_blocking is safe; it spares a wait for the GPU per copy.
    latents, noise, timesteps = (t.to(s.device, non_blocking=True) for t in (latents, noise, timesteps))
    noisy = sched.add_noise(latents, noise, timesteps)
    target = sched.get_velocity(latents, noise, timesteps) if model.prediction_type == "v_prediction" else noise
    if time_ids is None and model.family == "sdxl":
        time_ids = s.dataset.time_ids(indices)
    with s.precision.autocast():
        cond, added = conditioning.encode_prompts(model, prompts, s.device, time_ids, tokenize=tokenize or s.tokens)
        pred = model.unet(noisy.to(s.unet_dtype), timesteps, cond.to(s.unet_dtype), added_cond_kwargs=added).sample
    weights = None
    if weighted and cfg.loss_weighting != "none":
        weights = timestep_weights(sched.alphas_cumprod.to(s.device), timesteps, cfg.loss_weighting,
                                   model.prediction_type, cfg.min_snr_gamma)
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_image * weights).mean()


def prompt_for(s, index: int) -> str:
    """A template line drawn for one image, its caption and tags as the config shuffles and drops them."""
    cfg = s.config
    line = s.feed.rng.choice(s.template.lines)
    return render(line, s.placeholder, s.dataset.items[index].caption, shuffle_tags=cfg.shuffle_tags,
                  tag_dropout=cfg.tag_dropout, keep_tags=cfg.keep_tags, rng=s.feed.rng)
