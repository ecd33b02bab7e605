"""How the loop runs each step: gradient checkpointing `auto` decided once the model and the data are on the device,
the step eager or captured (`compile`), and what happens when a step runs out of GPU memory.

`StepPlan.start(s, end_step)` decides both, says so (`memory_plan` and `compile` events), and `plan.step(s, lr,
stop_between)` is what the loop calls in place of `core.training.update.train_step`; it answers what train_step
answers, and STEP_ABANDONED for a step to run again:

- a capture that fails for any reason but memory falls back to eager with a warning (the step runs again eagerly);
- an out-of-memory step under `gradient_checkpointing = auto` without checkpointing turns it on (captured graphs
  are dropped and captured again) and runs the step again, with a warning;
- any other out-of-memory step saves the last good step's state and ends the run with what to change (batch,
  resolution, checkpointing); `tiwiz resume` continues from that state.

A step run again draws new noise, timesteps and prompts (the failed draws are not rewound: reading the generator's
state before every step costs about a millisecond), so such a run is not the bit-for-bit twin of one that never
failed; its own resume is still exact, since the state holds the generators as they are.
"""

from __future__ import annotations

import torch

from core.errors import TiwizError
from core.models.device import cuda_memory
from core.runs import run_events as ev
from core.training import capture, checkpoints, update
from core.training.memory_plan import (GIB, choose_checkpointing, is_out_of_memory, out_of_memory_message,
                                       retry_with_checkpointing)


class StepPlan:
    def __init__(self, mode: str, runner: capture.CapturedStep | None) -> None:
        self.mode = mode      # eager, cuda_graph, compile (or static: the captured code path, uncaptured)
        self.runner = runner

    @classmethod
    def start(cls, s, end_step: int, impl: str | None = None) -> "StepPlan":
        """Decide checkpointing and the step's mode for session `s` (model and data loaded) and say both. `impl`
        forces a capture implementation ("cuda_graph", "compile", "static"), as the benches and tests do."""
        cfg = s.config
        _plan_checkpointing(s)
        if impl is not None:
            choice = capture.CompileChoice(impl, f"{impl} (set by the caller)")
        else:
            choice = capture.choose_compile(cfg.compile, device_type=s.device.type, precision=s.precision.name,
                                            optimizer=cfg.optimizer, steps_left=end_step - s.step)
        s.sink.emit(ev.Compile(step=s.step, mode=choice.mode, reason=choice.reason))
        if choice.mode == "eager":
            return cls("eager", None)
        if choice.mode == "compile":
            capture.use_compile_cache(s.out_dir)

        def captured(shape: str, seconds: float, graphs: int) -> None:
            s.sink.emit(ev.Compile(step=s.step, mode=choice.mode, reason="captured", seconds=round(seconds, 3),
                                   shape=shape, graphs=graphs))

        runner = capture.CapturedStep(session_loss_fn(s), s.vectors, s.optimizer, impl=choice.mode,
                                      clip=cfg.clip_grad, on_capture=captured)
        return cls(choice.mode, runner)

    def step(self, s, lr: float, stop_between):
        """One step of the loop (see the module's doc)."""
        try:
            if self.runner is None:
                return update.train_step(s, lr, stop_between)
            return captured_train_step(s, self.runner, lr, stop_between)
        except Exception as exc:  # noqa: BLE001 - sorted below; anything else is raised again
            if is_out_of_memory(exc):
                return self._out_of_memory(s, exc)
            if isinstance(exc, capture.CaptureFailed):
                return self._fall_back(s, exc)
            raise

    def _fall_back(self, s, exc: Exception) -> object:
        why = f"capturing the step failed ({exc}); training goes on eager"
        self.runner, self.mode = None, "eager"
        s.vectors.grad = None
        s.sink.emit(ev.Warning(step=s.step, message=why))
        s.sink.emit(ev.Compile(step=s.step, mode="eager", reason=why))
        return update.STEP_ABANDONED

    def _out_of_memory(self, s, exc: Exception) -> object:
        cfg = s.config
        if self.runner is not None:
            self.runner.discard()
        s.vectors.grad = None
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
        memory = cuda_memory(s.device)
        checkpointing = bool(getattr(s.model.unet, "is_gradient_checkpointing", False))
        if retry_with_checkpointing(cfg.gradient_checkpointing, checkpointing):
            capture.enable_checkpointing(s.model.unet)
            why = (f"auto: on, after step {s.step + 1} ran out of GPU memory without it; the step runs again")
            s.sink.emit(ev.Warning(step=s.step, message=f"gradient checkpointing turned on: {why}"))
            s.sink.emit(ev.MemoryPlan(step=s.step, gradient_checkpointing=True, reason=why))
            return update.STEP_ABANDONED
        saved = None
        if s.step > 0:
            checkpoints.save(s)
            saved = s.step
        raise TiwizError(out_of_memory_message(
            s.step, batch=s.feed.batch_size, width=cfg.width, height=cfg.height, checkpointing_on=checkpointing,
            saved_step=saved, free_gib=memory[0] / GIB if memory else None)) from exc


def _plan_checkpointing(s) -> None:
    """gradient_checkpointing auto: from the free memory now (model loaded, latents cached) and the largest image
    a batch holds; on/off as set. Says the choice (`memory_plan`)."""
    cfg = s.config
    width, height = max((item.size for item in s.dataset.items), key=lambda size: size[0] * size[1],
                        default=(cfg.width, cfg.height))
    memory = cuda_memory(s.device)
    choice = choose_checkpointing(cfg.gradient_checkpointing, device_type=s.device.type, family=s.model.family,
                                  width=max(width, 8), height=max(height, 8), batch=s.feed.batch_size,
                                  precision=s.precision.name, free_bytes=memory[0] if memory else None,
                                  previews=bool(cfg.preview_every))
    if choice.on and not getattr(s.model.unet, "is_gradient_checkpointing", False):
        capture.enable_checkpointing(s.model.unet)
    s.sink.emit(ev.MemoryPlan(step=s.step, gradient_checkpointing=choice.on, reason=choice.reason,
                              need_gib=choice.need_without_gib, free_gib=choice.free_gib))


# ---- the session's step through a CapturedStep --------------------------------------------------------------------
def draw_inputs(s, indices: list[int]) -> dict:
    """Everything random about one training micro-batch of session `s`, drawn on the host from the run's generators
    in the order an eager step draws it (core.training.update.batch_loss: latents, prompts, noise, timesteps), as
    CPU tensors: latents, noise, timesteps, the token ids per text encoder (`ids0`, `ids1`) and SDXL's `time_ids`.
    tests/test_compile_static.py checks that a run through these draws trains bit for bit like an eager one."""
    cfg, generator = s.config, s.generator
    latents = s.dataset.latents(indices, generator)
    prompts = [update.prompt_for(s, i) for i in indices]
    noise = torch.randn(latents.shape, generator=generator)
    if cfg.noise_offset:
        offset = torch.randn(latents.shape[:2] + (1, 1), generator=generator)
        noise = noise + cfg.noise_offset * offset
    timesteps = torch.randint(0, s.model.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator)
    inputs = {"latents": latents, "noise": noise, "timesteps": timesteps}
    for k, slot in enumerate(s.slots):
        inputs[f"ids{k}"] = s.tokens(slot.tokenizer, prompts, "cpu")
    if s.model.family == "sdxl":
        inputs["time_ids"] = s.dataset.time_ids(indices)
    return inputs


def session_loss_fn(s):
    """`loss_fn` for a CapturedStep of session `s`: core.training.update.batch_loss on the static buffers, the token
    ids taken from them instead of tokenising (a capture cannot copy from the host), divided by grad_accum."""
    by_tokenizer = {id(slot.tokenizer): f"ids{k}" for k, slot in enumerate(s.slots)}
    accum = s.config.grad_accum

    def loss_fn(buffers: dict):
        def tokenize(tokenizer, prompts, device):
            return buffers[by_tokenizer[id(tokenizer)]]

        batch = buffers["latents"].shape[0]
        loss = update.batch_loss(s, [], None, prompts=[""] * batch, latents=buffers["latents"],
                                 noise=buffers["noise"], timesteps=buffers["timesteps"], weighted=True,
                                 time_ids=buffers.get("time_ids"), tokenize=tokenize)
        return loss / accum

    return loss_fn


def captured_train_step(s, runner: capture.CapturedStep, lr: float, stop_between):
    """core.training.update.train_step through `runner`: the same micro-batches, stops, NaN test and skipped
    updates, with the forward/backward and the update replayed. Returns what train_step returns."""
    cfg = s.config
    runner.begin_step()
    total = None
    s.tokens.seen = False
    position = s.feed.position(s.generator) if cfg.grad_accum > 1 else None
    for micro in range(cfg.grad_accum):
        if micro and stop_between():
            runner.zero_grad()
            s.feed.rewind(position, s.generator)
            return update.STEP_ABANDONED
        loss = runner.micro(draw_inputs(s, s.feed.next_batch()))
        if micro < cfg.grad_accum - 1 and not torch.isfinite(loss):  # between micro-batches: a read is due anyway
            runner.zero_grad()
            return None
        total = loss if total is None else total + loss
    if not s.tokens.seen:  # no prompt held the trigger: nothing to learn, nothing applied (as eager)
        runner.zero_grad()
        return total
    # norm_mode's projections run eagerly around the captured update, in train_step's order (a few kernels; their
    # targets live on the host)
    s.norms.project_gradient(s.vectors)
    runner.update(lr, s.clip_schedule.rate_at(s.step) if cfg.clip_grad != "none" else None)
    s.norms.apply(s.vectors)
    return total
