"""The textual-inversion training loop. Read it top to bottom: setup, the loop, then the pieces it calls.

- The trainable vectors are one `nn.Parameter [n, dim]` (fp32 master copy). Placeholder tokens are added to the
  tokenizer for tokenisation only; hooks on the text encoder's token embedding splice the vectors in at those
  positions (`VectorSplice`). The optimizer (AdamW, weight decay 0) never sees the vocabulary matrix. SDXL: the
  parameter is [n, 768 + 1280], CLIP-L's and bigG's sets side by side, each spliced into its own encoder
  (`core.training.conditioning`); its files are NAME.safetensors with `clip_l` and `clip_g`, and no `.pt`.
- Text encoder, UNet and VAE are frozen; latents are cached by `core.training.dataset`. One step = one optimizer update over
  batch_size x grad_accum images. A template line is drawn for every image of every step.
- Every RNG the loop uses is its own (a torch Generator for noise/timesteps, a random.Random for data order and
  templates), saved in `state/latest.pt`, so `run(resume=True)` continues exactly. Previews and the validation loss
  use separate fixed-seed generators and never perturb training.
- Files (in `out_dir`, the run folder): config.toml, loss.csv, embeddings/NAME-STEP.{pt,safetensors},
  previews/NAME-STEP.png, state/latest.pt, and the final NAME.pt / NAME.safetensors at the top.
- Events: started, step, validation, checkpoint, preview, warning, error, stopped, finished (paths relative to out_dir).
  `run()` emits `error` for any exception before re-raising it.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Callable

from core.training.config import TrainConfig
from core.errors import TiwizError
from core.runs import run_events as ev
from core.training.schedule import parse_schedule

NORM_LIMIT_FACTOR = 100.0  # a vector this many times longer than the longest vocabulary token is diverging
ROLLBACK_TO_CHECKPOINT_AFTER = 3  # bad steps in a row before rolling back to the checkpoint and halving the lr
STEP_ABANDONED = object()  # _train_step's answer when a stop came between micro-batches
VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)
PLACEHOLDER = "<tiwiz-vec-{}>"
TOKEN_CACHE_SIZE = 20_000  # distinct prompts whose token ids are kept (per tokenizer)


class Trainer:
    def __init__(self, config: TrainConfig, out_dir, sink, poll_commands: Callable[[], list[str]] | None = None):
        import dataclasses

        self.config = dataclasses.replace(config)  # our own copy: the run adjusts it (e.g. vectors) and saves it
        self.out_dir = Path(out_dir)
        self.sink = sink
        self.poll_commands = poll_commands or (lambda: [])
        self.lr_scale = 1.0  # halved by each rollback to a checkpoint (saved in the state)
        self._norm_limits: list | None = None
        self._pending_commands: list = []  # commands read between micro-batches, handled after the step
        self.allow_data_change: bool | None = None  # None: $TIWIZ_ALLOW_DATA_CHANGE=1 (set by `tiwiz resume`)
        self._data_fingerprint: list | None = None
        self._gpu_polled = 0.0
        self._token_cache: dict = {}  # id(tokenizer) -> ({prompt: ids}, placeholder ids)
        self._placeholder_seen = False
        self._stop_requested = False  # a plain attribute: safe to set from a signal handler or another thread

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (thread and signal safe)."""
        self._stop_requested = True

    def run(self, resume: bool = False) -> dict:
        try:
            return self._run(resume)
        except BaseException as exc:
            full = self._disk_full_error(exc)
            shown = full or exc
            message = str(shown) if isinstance(shown, TiwizError) else f"{exc.__class__.__name__}: {exc}"
            with contextlib.suppress(Exception):
                self.sink.emit(ev.Error(message=message))
            if full is not None:
                raise full from exc
            raise
        finally:
            if getattr(self, "loss_log", None) is not None:
                self.loss_log.close()

    def _disk_full_error(self, exc: BaseException) -> TiwizError | None:
        """A full disk in words (torch says `iostream error`), with the free space and the checkpoint to go back to."""
        from core.diskspace import disk_full_message, is_disk_full

        if not isinstance(exc, Exception) or not is_disk_full(exc, self.out_dir):
            return None
        step = getattr(self, "step", 0)
        last = getattr(self, "last_saved_step", -1)
        if last > 0 and (self.out_dir / "state" / "latest.pt").is_file():
            hint = f"The last good checkpoint is step {last}; free space and `tiwiz resume {self.out_dir}` continues from it."
        else:
            hint = f"No checkpoint was saved yet; free space and `tiwiz resume {self.out_dir}` starts it again from step 0."
        return TiwizError(f"{disk_full_message(self.out_dir, f'write the files of step {step}')}. {hint}")

    # ---- the whole run --------------------------------------------------------------------------------------------
    def _run(self, resume: bool) -> dict:
        import torch

        cfg = self.config.validate()
        self._prepare_out_dir(resume)
        self.lr_schedule = parse_schedule(cfg.lr, "lr")
        self.clip_schedule = parse_schedule(cfg.clip_grad_value, "clip_grad_value")
        state = self._load_resume_state() if resume else None
        data_changed = self._check_data_unchanged(state)

        self._setup_model()
        self._setup_vectors(state)
        self._setup_data()
        self._setup_optimizer()
        self.step, self.epoch, self.elapsed_before = 0, 0, 0.0
        if state is not None:
            self._restore(state)
            if data_changed:  # the saved batch order indexes the old image list
                self.batches, self.batch_pos = [], 0

        end_step = self.lr_schedule.end_step(cfg.steps)
        if self.lr_schedule.stops_early(cfg.steps):
            self.sink.emit(ev.Warning(message=(
                f"the lr schedule {cfg.lr!r} ends at step {end_step}, so training stops there although steps = "
                f"{cfg.steps} (A1111 behaviour). End the schedule with a bare rate to train to {cfg.steps}.")))
        from core.training.resume_state import final_files_step

        if state is not None and self.step >= end_step and final_files_step(self.out_dir, self.name) != self.step:
            # Killed during the final save: the state reached the end before NAME.pt/.safetensors were written.
            self.sink.emit(ev.Warning(step=self.step, message=(
                f"the run ended at step {self.step} but its final files {self.name}.pt/.safetensors are missing or "
                "older (it was stopped during its final save); writing them now")))
        elif self.step >= end_step:
            raise TiwizError(f"this run is already at step {self.step} of {end_step}; raise steps to continue "
                             f"(e.g. `tiwiz resume RUN --steps {self.step + 1000}`)")
        self._warn_if_auto_stop_cannot_fire(end_step)
        cfg.to_toml(self.out_dir / "config.toml")
        from core.runs.lossfile import LossLog

        self.loss_log = LossLog(self.out_dir / "loss.csv", keep_until_step=self.step if state is not None else None)

        self.sink.emit(ev.Started(max_steps=end_step, step=self.step, name=self.name, device=str(self.device),
                                  precision=ev.precision_name(self.precision.name),
                                  n_images=len(self.dataset), model=self.model.name, family=self.model.family,
                                  resumed=state is not None,
                                  n_holdout=len(self.holdout_indices), auto_stop=cfg.auto_stop,
                                  auto_stop_window=cfg.auto_stop_window, threads=self.thread_choice.threads))
        self.t_start = time.monotonic()
        self.last_loss = self.last_val_loss = self.last_holdout_loss = self.last_val_step = None
        if state is None and self.validate_every:
            val = self._validation_loss()
            self.loss_log.write(0, 0, None, val, None, 0.0, holdout_loss=self.last_holdout_loss)
        self.last_saved_step = self.step if state is not None else -1

        reason = self._loop(end_step)
        pt, st = self._save(final=True)
        if reason in ("finished", "auto_stop"):
            self._final_previews()
        best_step, best_file, best_basis = self._best()
        if reason in ("finished", "auto_stop"):
            message = None
            if reason == "auto_stop":
                w = self.watch
                message = f"auto-stop: the validation loss went flat at step {self.step} of {end_step} (variance " \
                          f"ratio {w.ratio:.2f} < {w.threshold:g} over the last {w.window} steps)"
            self.sink.emit(ev.Finished(step=self.step, pt=pt, safetensors=st,
                                       reason="steps" if reason == "finished" else reason, message=message,
                                       best_step=best_step, best_checkpoint=best_file, best_basis=best_basis))
        else:
            self.sink.emit(ev.Stopped(step=self.step, reason=reason, pt=pt, safetensors=st, best_step=best_step,
                                      best_checkpoint=best_file, best_basis=best_basis))
        return {"state": "finished" if reason == "auto_stop" else reason, "reason": reason, "step": self.step,
                "max_steps": end_step, "pt": pt, "safetensors": st, "last_loss": self.last_loss,
                "last_val_loss": self.last_val_loss, "best_step": best_step, "best_checkpoint": best_file,
                "best_basis": best_basis}

    def _loop(self, end_step: int) -> str:
        """Train until end_step, or until a stop. Returns "finished" or the stop reason."""
        from core.models.device import gpu_fields

        cfg = self.config
        nan_streak, only_nan = 0, True
        self._good = self._snapshot()
        self._checkpoint_snap = getattr(self, "_checkpoint_snap", None) or (self.step, self._good)
        ema, step_times = None, []
        while self.step < end_step:
            reason = self._handle_commands()
            if reason:
                return reason
            self.thread_choice.tick()
            lr = self.lr_schedule.rate_at(self.step) * self.lr_scale
            t0 = time.monotonic()
            total = self._train_step(lr)
            if total is STEP_ABANDONED:
                continue  # a stop came between micro-batches: _handle_commands ends the loop
            loss, blown = self._step_outcome(total) if total is not None else (None, None)
            why = "loss was NaN/inf"
            if loss is not None and blown is not None:
                # A finite step can still poison the state (norms of 1e30 give NaN on every retry): never keep it.
                loss, only_nan = None, False
                why = (f"the vectors' norm reached {blown[0]:.3g}, over {NORM_LIMIT_FACTOR:g}x the largest in the "
                       f"vocabulary ({blown[1] / NORM_LIMIT_FACTOR:.3g})")
            if loss is None:
                nan_streak += 1
                failing = self.step + 1  # the step that failed; the same number in the warning and the error
                if nan_streak % ROLLBACK_TO_CHECKPOINT_AFTER == 0:
                    ckpt_step, snap = self._checkpoint_snap
                    self._restore_snapshot(snap)
                    self._good = snap
                    self.lr_scale *= 0.5
                    done = (f"vectors rolled back to the checkpoint at step {ckpt_step} and the learning rate halved "
                            f"(now {self.lr_scale:g}x the schedule's)")
                else:
                    self._restore_snapshot(self._good)
                    done = "step skipped and vectors rolled back to the last good state"
                self.sink.emit(ev.Warning(step=failing, message=(
                    f"{why} at step {failing}; {done} ({nan_streak}/{cfg.max_nan_steps} in a row)")))
                if nan_streak >= cfg.max_nan_steps:
                    what = "the loss was NaN/inf" if only_nan else "training diverged (NaN/inf loss or blown-up vectors)"
                    raise TiwizError(f"{what} for {nan_streak} steps in a row at step {failing}; "
                                     "lower the learning rate (lr) or try another init text. The last good "
                                     "checkpoint in embeddings/ is intact.")
                continue
            nan_streak, only_nan = 0, True
            self.step += 1
            self._good = self._snapshot()
            if self.ema is not None:
                self.ema.update(self.vectors)
            self.last_loss = loss
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            step_times = (step_times + [time.monotonic() - t0])[-20:]
            it_s = len(step_times) / sum(step_times) if sum(step_times) > 0 else 0.0  # training steps only
            elapsed = self._elapsed()

            val = None
            if self.validate_every and self.step % self.validate_every == 0:
                with self._averaged():
                    val = self._validation_loss()
            self.loss_log.write(self.step, self.epoch, loss, val, lr, elapsed,
                                holdout_loss=self.last_holdout_loss if val is not None else None)
            gpu = {}
            if self.device.type == "cuda" and time.monotonic() - self._gpu_polled > 2.0:
                self._gpu_polled, gpu = time.monotonic(), gpu_fields(self.device)
            self.sink.emit(ev.Step(step=self.step, max_steps=end_step, epoch=self.epoch, loss=loss,
                                   loss_avg=ema, lr=lr, it_s=it_s, elapsed=round(elapsed, 3), **gpu))
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < end_step:
                self._save()
            if cfg.preview_every and self.step % cfg.preview_every == 0:
                self._preview()
            if val is not None and self._watch_save_due():
                self._save()
            if val is not None and cfg.auto_stop and self.watch.stop:
                return "auto_stop"
        return "finished"

    def _handle_commands(self) -> str | None:
        pending, self._pending_commands = self._pending_commands, []
        for command in pending + list(self.poll_commands() or []):
            if command == "save":
                self._save()
            elif command == "preview":
                self._preview()
            elif command == "stop":
                self.sink.emit(ev.Stopping(step=self.step, reason="stop requested"))
                return "stop"
            else:
                self.sink.emit(ev.Warning(message=f"ignored unknown command {command!r}"))
        if self._stop_requested:
            self.sink.emit(ev.Stopping(step=self.step, reason="interrupted"))
            return "interrupted"
        return None

    # ---- one optimizer step -----------------------------------------------------------------------------------------
    def _train_step(self, lr: float):
        """Accumulate grad_accum micro-batches and apply one update. Returns the summed loss as a tensor on the device
        (read once, with the NaN and norm checks, by `_step_outcome`: no wait for the GPU inside the step), or None
        (not applied) if a micro-batch before the last was not finite. A non-finite last micro-batch is applied and
        then undone by the loop's rollback, like a step that leaves non-finite vectors."""
        import torch

        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        self._placeholder_seen = False  # set by _token_ids, on the host
        position = self._data_position() if cfg.grad_accum > 1 else None  # get_state costs ~1 ms a step
        for micro in range(cfg.grad_accum):
            if micro and self._stop_between_micro_batches():
                # Abandon this step as if it never began, so the saved state resumes exactly.
                self.optimizer.zero_grad(set_to_none=True)
                self._restore_data_position(position)
                return STEP_ABANDONED
            indices = self._next_batch()
            loss = self._batch_loss(indices, self.generator, weighted=True) / cfg.grad_accum
            if micro < cfg.grad_accum - 1 and not torch.isfinite(loss):  # between micro-batches: a read is due anyway
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if loss.requires_grad:  # not when no prompt held the trigger (on the CPU the splice then does nothing)
                self.scaler.scale(loss).backward() if self.scaler else loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if not self._placeholder_seen:
            # No prompt of this step held the trigger (a template line without [name]): nothing to learn, and the
            # splice (which on a GPU does not test for that, to avoid a wait) left zero gradients; apply nothing.
            self.optimizer.zero_grad(set_to_none=True)
            return total
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.clip_grad != "none":
            limit = self.clip_schedule.rate_at(self.step)
            if cfg.clip_grad == "value":
                torch.nn.utils.clip_grad_value_([self.vectors], limit)
            else:
                torch.nn.utils.clip_grad_norm_([self.vectors], limit)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return total

    def _step_outcome(self, total) -> tuple[float | None, tuple[float, float] | None]:
        """(loss, blow-up) of a step, from one read of the device: the loss (None if it or the vectors are not
        finite) and, for finite ones, (largest norm, limit) when a vector is over its limit (see _norm_blowup)."""
        import torch

        vectors = self.vectors.detach().float()
        limits = self._vector_norm_limits()
        figures = torch.stack([total.float().reshape(()), torch.isfinite(vectors).all().float(),
                               *[vectors[:, columns].norm(dim=1).max() for columns, _ in limits]]).tolist()
        loss, finite, tops = figures[0], figures[1], figures[2:]
        if not (finite and abs(loss) != float("inf") and loss == loss):
            return None, None
        for top, (_, limit) in zip(tops, limits):
            if not top <= limit:
                return loss, (top, limit)
        return loss, None

    def _stop_between_micro_batches(self) -> bool:
        """A stop (signal or `stop` command) is honoured within one forward/backward, not after grad_accum of them.
        Other commands wait for the end of the step."""
        taken = list(self.poll_commands() or [])
        if "stop" in taken:
            self._pending_commands.append("stop")
        self._pending_commands.extend(c for c in taken if c != "stop")
        return self._stop_requested or "stop" in taken

    def _norm_blowup(self) -> tuple[float, float] | None:
        """(largest vector norm, limit) when a vector is over NORM_LIMIT_FACTOR x the longest vocabulary token of
        its text encoder, else None."""
        vectors = self.vectors.detach()
        for columns, limit in self._vector_norm_limits():
            top = float(vectors[:, columns].float().norm(dim=1).max())
            if not top <= limit:
                return top, limit
        return None

    def _vector_norm_limits(self) -> list:
        """[(columns, limit)] per text encoder: NORM_LIMIT_FACTOR x its longest vocabulary token (computed once)."""
        if self._norm_limits is None:
            self._norm_limits = [
                (slot.columns, NORM_LIMIT_FACTOR * float(slot.encoder.get_input_embeddings().weight.detach()
                                                         .float().norm(dim=1).max()))
                for slot in self.slots]
        return self._norm_limits

    def _data_position(self) -> tuple:
        return (self.generator.get_state(), self.data_rng.getstate(), self.batches, self.batch_pos, self.epoch)

    def _restore_data_position(self, position: tuple) -> None:
        generator, data_rng, self.batches, self.batch_pos, self.epoch = position
        self.generator.set_state(generator)
        self.data_rng.setstate(data_rng)

    def _batch_loss(self, indices: list[int], generator, prompts: list[str] | None = None, latents=None,
                    noise=None, timesteps=None, weighted: bool = False, time_ids=None):
        """Diffusion loss for one batch. Training draws noise/timesteps from `generator` and applies `loss_weighting`
        (weighted=True); validation passes its own and stays plain MSE, so it is comparable across settings."""
        import torch
        import torch.nn.functional as F

        sched = self.model.noise_scheduler
        if latents is None:
            latents = self.dataset.latents(indices, generator)
        if prompts is None:
            prompts = [self._prompt_for(i) for i in indices]
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator)
            if self.config.noise_offset:  # training only: validation passes its own fixed noise
                offset = torch.randn(latents.shape[:2] + (1, 1), generator=generator)
                noise = noise + self.config.noise_offset * offset
        if timesteps is None:
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        # Pageable host memory is staged at once, so non_blocking is safe; it spares a wait for the GPU per copy.
        latents, noise, timesteps = (t.to(self.device, non_blocking=True) for t in (latents, noise, timesteps))
        noisy = sched.add_noise(latents, noise, timesteps)
        target = sched.get_velocity(latents, noise, timesteps) if self.model.prediction_type == "v_prediction" else noise
        if time_ids is None and self.model.family == "sdxl":
            time_ids = self.dataset.time_ids(indices)
        with self._autocast():
            cond, added = self._encode(prompts, time_ids)
            pred = self.model.unet(noisy.to(self.unet_dtype), timesteps, cond.to(self.unet_dtype),
                                   added_cond_kwargs=added).sample
        weights = None
        if weighted and self.config.loss_weighting != "none":
            from core.training.loss_weights import timestep_weights

            weights = timestep_weights(sched.alphas_cumprod.to(self.device), timesteps, self.config.loss_weighting,
                                       self.model.prediction_type, self.config.min_snr_gamma)
        if weights is None:
            return F.mse_loss(pred.float(), target.float())
        per_image = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_image * weights).mean()

    def _encode(self, prompts: list[str], time_ids=None):
        """(UNet conditioning, SDXL's added_cond_kwargs or None): core.training.conditioning."""
        from core.training.conditioning import encode_prompts

        return encode_prompts(self.model, prompts, self.device, time_ids, tokenize=self._token_ids)

    def _token_ids(self, tokenizer, prompts: list[str], device):
        """Token ids of prompts: tokenised once per distinct prompt (a template x caption set repeats its prompts
        every epoch), copied without waiting for the GPU. Notes on the host whether a placeholder is among them."""
        import torch

        from core.training.conditioning import token_ids

        if id(tokenizer) not in self._token_cache:
            self._token_cache[id(tokenizer)] = ({}, torch.tensor(
                tokenizer.convert_tokens_to_ids(self.placeholder.split())))
        cache, placeholder_ids = self._token_cache[id(tokenizer)]
        missing = [p for p in dict.fromkeys(prompts) if p not in cache]
        if missing:
            if len(cache) + len(missing) > TOKEN_CACHE_SIZE:  # tag shuffling makes prompts unbounded
                cache.clear()
            cache.update(zip(missing, token_ids(tokenizer, missing, "cpu")))
        ids = torch.stack([cache[p] for p in prompts])
        if torch.isin(ids, placeholder_ids).any():
            self._placeholder_seen = True
        return ids.to(device, non_blocking=True)

    def _next_batch(self) -> list[int]:
        if self.batch_pos >= len(self.batches):
            self.epoch += 1
            self.batches = self.dataset.epoch_batches(self.data_rng, self.batch_size, self.train_indices)
            self.batch_pos = 0
        batch = self.batches[self.batch_pos]
        self.batch_pos += 1
        return batch

    def _prompt_for(self, index: int) -> str:
        cfg = self.config
        line = self.data_rng.choice(self.template.lines)
        return self._render(line, self.placeholder, self.dataset.items[index].caption,
                            shuffle_tags=cfg.shuffle_tags, tag_dropout=cfg.tag_dropout, rng=self.data_rng)

    def _autocast(self):
        return self.precision.autocast()

    # ---- validation, previews, saving -------------------------------------------------------------------------------
    def _validation_loss(self) -> float:
        """Mean loss over fixed images x fixed timesteps x fixed noise, with fixed prompts. Independent of training.
        Also the same loss on the held-out images, the auto-stop rule's state and the best step so far."""
        val = self._fixed_loss(self.validation_set)
        holdout = self._fixed_loss(self.holdout_set) if self.holdout_set else None
        self.last_val_loss, self.last_holdout_loss, self.last_val_step = val, holdout, self.step
        self.watch = self.autostop.update(self.step, val)
        self._new_best = False
        if holdout is not None and (self.best_holdout is None or holdout < self.best_holdout[1]):
            self._new_best = self.best_holdout is not None or self.step > 0
            self.best_holdout = (self.step, holdout)
        w, (best_step, _, best_basis) = self.watch, self._best()
        self.sink.emit(ev.Validation(step=self.step, val_loss=val, holdout_loss=holdout, best_step=best_step,
                                     best_basis=best_basis,
                                     auto_stop_ratio=w.ratio, auto_stop_watched=w.watched, auto_stop_window=w.window,
                                     auto_stop_threshold=w.threshold, auto_stop_fired_at=w.fired_at))
        return val

    def _fixed_loss(self, fixed_set: list) -> float:
        import torch

        total = 0.0
        with torch.no_grad():
            for latents, noise, timesteps, prompt, time_ids in fixed_set:
                loss = self._batch_loss([], None, prompts=[prompt] * len(timesteps), latents=latents, noise=noise,
                                        timesteps=timesteps, time_ids=time_ids)
                total += float(loss)
        return total / len(fixed_set)

    def _watch_save_due(self) -> bool:
        """Save a checkpoint where the suggested best step lands, so it can be copied: a new held-out low, or the
        step where the auto-stop rule first finds the loss flat."""
        if self.last_saved_step == self.step or self.step == 0:
            return False
        return self._new_best or self.watch.stop

    def _best(self) -> tuple[int | None, str | None, str | None]:
        """The suggested best step, its checkpoint and its basis (run_events.BEST_BASES): the lowest held-out loss,
        else where the auto-stop rule fired, else the checkpointed step with the lowest validation loss (a rule that
        never fired leaves the loss still moving; a step without its file could not be copied)."""
        if self.best_holdout is not None:
            step, basis = self.best_holdout[0], "holdout"
        elif self.autostop.fired_at is not None:
            step, basis = self.autostop.fired_at, "flat"
        elif self.best_val_checkpoint is not None:
            step, basis = self.best_val_checkpoint[0], "validation"
        else:
            return None, None, None
        rel = f"embeddings/{self.name}-{step}.safetensors"
        return step, rel if (self.out_dir / rel).is_file() else None, basis

    def _best_val_checkpoint_on_disk(self, until_step: int) -> tuple[int, float] | None:
        """`best_val_checkpoint` of a run whose state predates it: from loss.csv and the checkpoint files there."""
        from core.runs.lossfile import read_loss_csv

        try:
            rows = read_loss_csv(self.out_dir / "loss.csv")
        except (OSError, UnicodeDecodeError):
            return None
        saved = [(r["val_loss"], r["step"]) for r in rows if r["val_loss"] is not None and 0 < r["step"] <= until_step
                 and (self.out_dir / f"embeddings/{self.name}-{r['step']}.safetensors").is_file()]
        return (min(saved)[1], min(saved)[0]) if saved else None

    def _warn_if_auto_stop_cannot_fire(self, end_step: int) -> None:
        from core.training.autostop import unreachable_reason

        why = unreachable_reason(self.validate_every, self.config.auto_stop_window, end_step) \
            if self.config.auto_stop else None
        if why:
            self.sink.emit(ev.Warning(message=f"auto-stop cannot fire in this run: {why}. It trains to the last step"))

    def _build_validation_set(self, indices: list[int] | None = None, seed_offset: int = 1_000_003) -> list:
        import torch

        cfg = self.config
        indices = list(range(len(self.dataset))) if indices is None else indices
        gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
        n = min(cfg.validation_images, len(indices))
        picks = sorted({indices[round(k * (len(indices) - 1) / max(1, n - 1))] for k in range(n)})
        timesteps = torch.tensor(VALIDATION_TIMESTEPS, dtype=torch.long)
        out = []
        for i in picks:
            item = self.dataset.items[i]
            latents = item.mean.unsqueeze(0).repeat(len(timesteps), 1, 1, 1)
            noise = torch.randn(latents.shape, generator=gen)
            prompt = self._render(self.template.lines[0], self.placeholder, item.caption, rng=random.Random(0))
            time_ids = self.dataset.time_ids([i] * len(timesteps)) if self.model.family == "sdxl" else None
            out.append((latents, noise, timesteps, prompt, time_ids))
        return out

    def _final_previews(self) -> None:
        """A preview of the last step (unless the schedule just made one), then previews/sheet.png of them all."""
        if not self.config.preview_every:
            return
        if self.step % self.config.preview_every:
            self._preview()
        try:
            from core.training.contact_sheet import write_contact_sheet

            write_contact_sheet(self.out_dir / "previews", self.name)
        except Exception as exc:  # a sheet is a convenience: never the end of a finished training
            self.sink.emit(ev.Warning(step=self.step, message=f"could not write previews/sheet.png: {exc}"))

    def _preview(self) -> str | None:
        """Render a preview; a failure (e.g. out of memory) is a warning, never the end of the training."""
        self.sink.emit(ev.PreviewRendering(step=self.step))  # viewers say "rendering preview…" meanwhile
        try:
            with self._averaged():
                return self._render_preview()
        except TiwizError:
            raise
        except Exception as exc:
            self.sink.emit(ev.Warning(step=self.step,
                                      message=f"preview at step {self.step} failed: {exc.__class__.__name__}: {exc}"))
            return None

    def _render_preview(self) -> str:
        import torch

        cfg = self.config
        prompt = (cfg.preview_prompt or self.validation_set[0][3]).replace("[name]", self.placeholder)
        if cfg.preview_prompt and "[name]" not in cfg.preview_prompt:
            prompt = f"{prompt}, {self.placeholder}"
        pipe = self.model.make_pipeline(cfg.preview_sampler)
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(cfg.preview_seed)
        with self._autocast():
            image = pipe(prompt=prompt, negative_prompt=cfg.preview_negative or None,
                         num_inference_steps=cfg.preview_steps, guidance_scale=cfg.preview_cfg, generator=generator,
                         width=cfg.preview_width or cfg.width, height=cfg.preview_height or cfg.height).images[0]
        from core.atomic import atomic_write_with

        rel = f"previews/{self.name}-{self.step}.png"
        atomic_write_with(self.out_dir / rel, lambda tmp: image.save(tmp, format="PNG"))
        self.sink.emit(ev.Preview(step=self.step, path=rel))
        return rel

    def _save(self, final: bool = False) -> tuple[str, str]:
        """Checkpoint embeddings/NAME-STEP.* and state/latest.pt (once per step); with final=True also NAME.*."""
        try:
            return self._write_checkpoint(final)
        except OSError as exc:
            raise TiwizError(f"could not save at step {self.step}: {exc.strerror or exc} ({exc.filename or self.out_dir})"
                             "; earlier checkpoints are intact") from exc

    def _write_checkpoint(self, final: bool) -> tuple[str, str]:
        if self.last_saved_step != self.step:
            pt, st = self._save_embedding(f"embeddings/{self.name}-{self.step}")
            if self.last_val_step == self.step and (self.best_val_checkpoint is None
                                                    or self.last_val_loss < self.best_val_checkpoint[1]):
                self.best_val_checkpoint = (self.step, self.last_val_loss)
            self._save_state()
            self.last_saved_step = self.step
            self._checkpoint_snap = (self.step, self._snapshot())  # where a divergence rolls back to
            report = self._vector_report()
            best_step, _, best_basis = self._best()
            self.sink.emit(ev.Checkpoint(step=self.step, pt=pt, safetensors=st, norms=report["norms"],
                                         nearest=report["nearest"], vocab_median_norm=report["vocab_median_norm"],
                                         best=True if self._new_best and self.best_holdout[0] == self.step else None,
                                         best_step=best_step, best_basis=best_basis))
            for i, message in enumerate(report["norm_warnings"]):
                if message[:12] not in self._norm_warned:  # once per vector ("vector N has")
                    self._norm_warned.add(message[:12])
                    self.sink.emit(ev.Warning(step=self.step, message=message))
        if final:
            return self._save_embedding(self.name)
        pt = "" if self.model.family == "sdxl" else f"embeddings/{self.name}-{self.step}.pt"
        return pt, f"embeddings/{self.name}-{self.step}.safetensors"

    def _vector_report(self) -> dict:
        """Norms and nearest vocabulary tokens of the vectors (core.embeddings.inspect); never fails a save."""
        from core.embeddings.inspect import vector_report, vocabulary_from_encoder

        try:
            if self._vocab is None:
                self._vocab = vocabulary_from_encoder(self.model.text_encoder, self.model.tokenizer)
            return vector_report(self._saved_vectors()[:, self.slots[0].columns], self._vocab)  # SDXL: clip_l
        except Exception:  # noqa: BLE001 - an inspector problem must never cost a checkpoint
            return {"norms": None, "nearest": None, "vocab_median_norm": None, "norm_warnings": []}

    def _save_embedding(self, rel_stem: str) -> tuple[str, str]:
        pt, st = self._save_embedding_fn(
            self._saved_vectors().float().cpu(), self.out_dir / rel_stem, name=self.name, step=self.step,
            base_model=self.model.name, base_hash=self.model.short_hash, init_text=self.config.init_text,
            overwrite=True)
        return ("" if pt is None else str(Path(pt).relative_to(self.out_dir))), str(Path(st).relative_to(self.out_dir))

    def _save_sdxl(self, vectors, stem, **fields):
        """SDXL files: `clip_l` and `clip_g` split from the vector parameter; no `.pt` (None)."""
        from core.embeddings.vectors import save_sdxl_embedding
        from core.training.conditioning import split_vectors

        parts = split_vectors(vectors, self.slots)
        return None, save_sdxl_embedding(parts["clip_l"], parts["clip_g"], stem, **fields)

    def _save_state(self) -> None:
        from core.training.resume_state import capture_global_rng, py_state, save_state

        save_state(self.out_dir / "state" / "latest.pt", {
            "name": self.name,
            "step": self.step,
            "epoch": self.epoch,
            "elapsed_s": self._elapsed(),
            "vectors": self.vectors.detach().float().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "generator": self.generator.get_state(),
            "data_rng": py_state(self.data_rng),
            "batches": [list(b) for b in self.batches],
            "batch_pos": self.batch_pos,
            "lr_scale": self.lr_scale,
            "data_fingerprint": self._data_fingerprint,
            "autostop": self.autostop.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best_holdout": list(self.best_holdout) if self.best_holdout is not None else None,
            "best_val_checkpoint": list(self.best_val_checkpoint) if self.best_val_checkpoint is not None else None,
            "global_rng": capture_global_rng(),
            "loss_rows_until_step": self.step,
        })

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.t_start)

    # ---- setup ------------------------------------------------------------------------------------------------------
    def _prepare_out_dir(self, resume: bool) -> None:
        cfg = self.config
        from core.embeddings.vectors import sanitize_name

        self.name = sanitize_name(cfg.name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from core.atomic import remove_stale_temps

        remove_stale_temps(self.out_dir, ("embeddings", "previews", "state"))  # from a save killed mid-write
        if resume:
            return
        markers = [p for p in ("state/latest.pt", "loss.csv", f"{self.name}.pt") if (self.out_dir / p).exists()]
        if markers and not cfg.overwrite:
            raise TiwizError(f"{self.out_dir} already holds a training run ({markers[0]}); resume it, choose another "
                             "output folder, or pass --overwrite to start over in it")

    def _check_data_unchanged(self, state: dict | None) -> str | None:
        """Fingerprint the data folder (names, sizes, mtimes; saved in the state). On resume, refuse a folder that
        changed since the checkpoint unless allowed (then a warning)."""
        import os

        from core.training.resume_state import data_fingerprint, describe_data_change

        try:
            self._data_fingerprint = data_fingerprint(self.config.data)
        except TiwizError:
            self._data_fingerprint = None  # a missing folder: build_dataset says so in its own words
        if state is None or self._data_fingerprint is None:
            return None
        change = describe_data_change(state.get("data_fingerprint"), self._data_fingerprint)
        if change is None:
            return None
        allowed = self.allow_data_change if self.allow_data_change is not None else \
            os.environ.get("TIWIZ_ALLOW_DATA_CHANGE") == "1"
        where = f"the data folder {self.config.data} changed since the checkpoint at step {state.get('step')}: {change}"
        if not allowed:
            raise TiwizError(f"data: {where}. Put the images back, or resume with --allow-data-change to train on "
                             "the folder as it is now")
        self.sink.emit(ev.Warning(message=f"{where}; training goes on with the folder as it is now "
                                          "(--allow-data-change)"))
        return change

    def _load_resume_state(self) -> dict:
        from core.training.resume_state import load_state

        return load_state(self.out_dir / "state" / "latest.pt")

    def _setup_model(self) -> None:
        from core.models.device import pick_device, precision_for
        from core.models.loader import load_model

        from core.training.threads import ThreadChoice

        self.thread_choice = ThreadChoice(self.config.threads)  # the free cores, not all cores (OpenMP spinning)
        self.thread_choice.apply()
        self.device = pick_device(self.config.device)
        self.precision = precision_for(self.device, self.config.precision)
        prediction = None if self.config.prediction_type == "auto" else self.config.prediction_type
        # Under bf16 autocast on CUDA the frozen weights are bf16 (every family: half the memory, and autocast no
        # longer casts each weight at each forward); otherwise fp32. The trained vectors stay fp32 either way.
        self.model = load_model(self.config.model, device=self.device, prediction_type=prediction,
                                dtype=self._frozen_weights_dtype())
        for module in self.model.modules:
            module.requires_grad_(False)
            module.eval()
        checkpointing = self.config.gradient_checkpointing
        if checkpointing == "on" or (checkpointing == "auto" and self.model.family == "sdxl"
                                     and self.device.type == "cuda"):
            self.model.unet.enable_gradient_checkpointing()  # frozen weights: only the activations are recomputed
        if self.model.family == "sdxl" and max(self.config.width, self.config.height) < 768:
            self.sink.emit(ev.Warning(message=(
                f"SDXL models are made for 1024 px; training at {self.config.width}x{self.config.height} is faster but "
                "the embedding may fit full-size images less well (--width 1024 --height 1024)")))
        self.unet_dtype = next(self.model.unet.parameters()).dtype
        self.scaler = self.precision.grad_scaler()

    def _frozen_weights_dtype(self):
        """bf16 on CUDA with bf16 autocast (any family), else None (fp32). fp16 autocast keeps fp32 weights: the ops
        autocast leaves in fp32 (norms, softmax, the loss) then keep fp32's range, which fp16 weights would not. CPU
        bf16 autocast keeps fp32 weights too: bf16 ones were still slower than plain fp32 there (bench/RESULTS.md)."""
        import torch

        if self.device.type != "cuda" or self.precision.autocast_dtype != torch.bfloat16:
            return None
        return torch.bfloat16

    def _setup_vectors(self, state: dict | None) -> None:
        import torch

        from core.embeddings.vectors import init_vectors, load_embedding, save_embedding, trigger_problems

        from core.training.conditioning import encoder_slots

        # SD1/SD2: one encoder. SDXL: CLIP-L and bigG, their vector sets side by side in one parameter (see
        # core.training.conditioning for why that trains exactly like two).
        cfg, tokenizer, self.slots = self.config, self.model.tokenizer, encoder_slots(self.model)
        dim = sum(slot.width for slot in self.slots)
        widths = tuple(slot.width for slot in self.slots)
        if state is not None:
            initial = state["vectors"].float()
        elif cfg.init_from:
            loaded = load_embedding(cfg.init_from, expected_dim=dim, family=self.model.family,
                                    widths=widths if self.model.family == "sdxl" else None)
            for message in loaded.warnings:
                self.sink.emit(ev.Warning(message=message))
            initial = loaded.vectors.float()
            if initial.shape[0] != cfg.vectors:
                self.sink.emit(ev.Warning(message=f"init_from has {initial.shape[0]} vectors; using that instead of "
                                                  f"vectors = {cfg.vectors}"))
        else:  # A1111's semantics, for each encoder from its own vocabulary
            initial = torch.cat([init_vectors(slot.tokenizer, slot.encoder, cfg.init_text, cfg.vectors).float()
                                 for slot in self.slots], dim=1)
        if initial.shape[-1] != dim:
            raise TiwizError(f"the embedding is {initial.shape[-1]} wide but this model's text encoder is {dim} wide")
        self.vectors = torch.nn.Parameter(initial.detach().clone().to(self.device))
        cfg.vectors = int(initial.shape[0])  # what config.toml records: the count actually trained (init_from, resume)
        tokens = [PLACEHOLDER.format(i) for i in range(initial.shape[0])]
        self.splices = []
        for slot in self.slots:
            slot.tokenizer.add_tokens([t for t in tokens if t not in slot.tokenizer.get_vocab()])
            self.splices.append(VectorSplice(slot.encoder, slot.tokenizer.convert_tokens_to_ids(tokens), self.vectors,
                                             columns=slot.columns))
        self.splice = self.splices[0]
        self.placeholder = " ".join(tokens)
        self._save_embedding_fn = save_embedding
        if self.model.family == "sdxl":
            self._save_embedding_fn = self._save_sdxl
            self.sink.emit(ev.Warning(message=(
                "SDXL: the embedding is saved as NAME.safetensors only, with clip_l and clip_g tensors (the layout "
                "A1111/Forge, ComfyUI, InvokeAI and SD.Next load); there is no .pt format for SDXL embeddings")))
        for problem in trigger_problems(tokenizer, self.name, initial.shape[0]):
            self.sink.emit(ev.Warning(message=f"name: {problem}"))

    def _setup_data(self) -> None:
        cfg = self.config
        from core.training.dataset import build_dataset
        from core.prep.buckets import bucketer_for
        from core.training.templates import load_template, render

        self.template = load_template(cfg.template)
        self._render = render
        self.dataset = build_dataset(cfg.data, vae=self.model.vae, width=cfg.width, height=cfg.height,
                                     resize=cfg.resize, latent_sampling=cfg.latent_sampling, seed=cfg.seed,
                                     sink=self.sink, device=self.device,
                                     bucketer=bucketer_for(cfg) if cfg.buckets else None)
        self.batch_size = min(cfg.batch_size, len(self.dataset))
        if self.batch_size < cfg.batch_size:
            self.sink.emit(ev.Warning(message=f"batch_size {cfg.batch_size} is more than the {len(self.dataset)} "
                                              f"images; using {self.batch_size}"))
        n_hold = cfg.effective_holdout(len(self.dataset))
        if cfg.holdout > 0 and not n_hold:
            self.sink.emit(ev.Warning(message=f"holdout {cfg.holdout} ignored: {len(self.dataset)} images are too "
                                              "few to hold any out (8 or more needed)"))
        held = set(random.Random(cfg.seed + 4243).sample(range(len(self.dataset)), n_hold)) if n_hold else set()
        self.holdout_indices = sorted(held)
        self.train_indices = [i for i in range(len(self.dataset)) if i not in held]
        if n_hold and self.batch_size > len(self.train_indices):
            self.batch_size = len(self.train_indices)
        self.validate_every = cfg.effective_validate_every()
        self.validation_set = self._build_validation_set(self.train_indices)
        self.holdout_set = self._build_validation_set(self.holdout_indices, 2_000_029) if n_hold else []
        from core.training.autostop import AutoStop

        self.autostop = AutoStop(cfg.auto_stop_window, cfg.auto_stop_threshold)
        self.watch = None
        self.best_holdout, self._new_best, self._vocab, self._norm_warned = None, False, None, set()
        self.best_val_checkpoint = None  # (step, val_loss): the checkpointed step with the lowest validation loss
        self.data_rng = random.Random(cfg.seed)
        self.batches, self.batch_pos = [], 0

    def _setup_optimizer(self) -> None:
        import torch

        self.generator = torch.Generator().manual_seed(self.config.seed)
        from core.training.optimizers import lr_warning, make_optimizer

        self.optimizer = make_optimizer(self.config.optimizer, [self.vectors], self.lr_schedule.rate_at(0),
                                        self.device.type)
        warning = lr_warning(self.config.optimizer, self.config.lr)
        if warning:
            self.sink.emit(ev.Warning(message=warning))
        from core.training.vector_ema import VectorEMA

        self.ema = VectorEMA(self.vectors, self.config.ema_decay) if self.config.ema_decay > 0 else None

    def _averaged(self):
        """With ema_decay: the vectors' average in place of the raw ones (validation, previews), else nothing."""
        return self.ema.swapped_in(self.vectors) if self.ema is not None else contextlib.nullcontext()

    def _saved_vectors(self):
        """What checkpoints and the final files hold: the average with ema_decay, else the vectors."""
        return (self.ema.average if self.ema is not None else self.vectors).detach()

    def _restore(self, state: dict) -> None:
        from core.training.resume_state import py_state_from, restore_global_rng

        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.elapsed_before = float(state["elapsed_s"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.data_rng.setstate(py_state_from(state["data_rng"]))
        self.batches = [list(b) for b in state["batches"]]
        self.batch_pos = int(state["batch_pos"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.autostop.load_state_dict(state.get("autostop"))
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema"))  # none in a state from before ema_decay: it starts here
        self.best_holdout = tuple(state["best_holdout"]) if state.get("best_holdout") else None
        self.best_val_checkpoint = tuple(state["best_val_checkpoint"]) if state.get("best_val_checkpoint") else \
            self._best_val_checkpoint_on_disk(self.step)
        restore_global_rng(state["global_rng"])

    # ---- NaN rollback -----------------------------------------------------------------------------------------------
    def _snapshot(self) -> dict:
        """Taken after every good step: tensors cloned directly (copy.deepcopy of the optimizer state costs
        milliseconds of Python per step)."""
        return {"vectors": self.vectors.detach().clone(), "optimizer": _cloned(self.optimizer.state_dict()),
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def _restore_snapshot(self, snap: dict) -> None:
        import copy

        import torch

        with torch.no_grad():
            self.vectors.copy_(snap["vectors"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        if self.scaler and snap["scaler"]:
            self.scaler.load_state_dict(snap["scaler"])
        self.optimizer.zero_grad(set_to_none=True)


def _cloned(value):
    """A copy of a state dict: tensors cloned, dicts/lists/tuples rebuilt, numbers and strings shared, anything
    else deep-copied."""
    import copy

    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _cloned(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_cloned(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return copy.deepcopy(value)


class VectorSplice:
    """Splices trainable vectors into the text encoder's token embeddings wherever placeholder ids appear.

    A pre-hook maps placeholder ids (which lie past the vocabulary) to id 0 for the lookup; a forward hook replaces
    those positions with the vectors. Works for our own encoding and for a diffusers pipeline sharing the encoder.
    """

    def __init__(self, text_encoder, token_ids: list[int], vectors, columns: slice | None = None) -> None:
        import torch

        self.vectors = vectors
        self.columns = columns or slice(None)  # SDXL: this encoder's columns of the shared parameter
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)
        self._on_device = {}  # device -> token_ids there (copied once, not at every forward)
        self._hits = None
        embedding = text_encoder.get_input_embeddings()
        self._handles = [embedding.register_forward_pre_hook(self._before),
                         embedding.register_forward_hook(self._after)]

    def _before(self, module, args):
        ids = args[0]
        ids_here = self._on_device.get(ids.device)
        if ids_here is None:
            ids_here = self._on_device[ids.device] = self.token_ids.to(ids.device)
        self._hits = ids.unsqueeze(-1) == ids_here  # [batch, seq, n]
        return (ids.masked_fill(self._hits.any(-1), 0),) + tuple(args[1:])

    def _after(self, module, args, output):
        import torch

        hits, self._hits = self._hits, None
        mask = hits.any(-1)
        # On a GPU, asking whether any placeholder is there waits for it; torch.where gives the same values without.
        if output.device.type == "cpu" and not bool(mask.any()):
            return output
        which = hits.long().argmax(-1)
        spliced = self.vectors[:, self.columns].to(output.dtype)[which]
        return torch.where(mask.unsqueeze(-1), spliced, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
