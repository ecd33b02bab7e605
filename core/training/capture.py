"""Captured training steps (`compile` in TrainConfig): the forward and backward of a step, and the update of the
vectors, replayed as CUDA graphs instead of being launched op by op from Python.

Why: a 512 px SD1.5 step at batch 1 on an H200 runs 23.5 ms of GPU kernels inside 80-120 ms of wall time; the rest is
Python launching ~2,800 kernels (bench/RESULTS.md). A CUDA graph launches them all at once.

Two ways to capture, both here so bench/gpu_check can measure them side by side:

- `cuda_graph` (the default, chosen before any measurement: nothing to trace or compile, so it costs seconds, and
  it captures exactly the eager code): `torch.cuda.CUDAGraph` by hand. Per input shape (batch, latent size: one graph
  per bucket) the forward and backward are captured once over static input buffers, after two warm-up passes on a
  side stream; every graph shares one memory pool, so buckets cost the largest shape's activations, not their sum.
  The update (clipping and AdamW) is a graph of its own, replayed only when the step had a trigger in its prompts.
- `compile`: `torch.compile(mode="reduce-overhead")`, whose CUDA graph trees do the same after inductor compiled
  the step (minutes, cached on disk across runs: `use_compile_cache`).

What makes a step capturable:
- static shapes: fixed batch, latent size and 77 tokens per prompt; each new shape is a new graph (at most
  MAX_GRAPHS, then that shape runs uncaptured through the same code, with a warning);
- no random numbers inside the graph: noise, timesteps, sampled latents and prompts are drawn on the host from the
  run's own generators, exactly as an eager step draws them (core.training.step_plan.draw_inputs), and copied into
  the static buffers. So a captured run draws what an eager run draws, its state/latest.pt is the eager one, and
  resume stays exact; no generator has to be registered with the graph. The frozen UNet draws none either:
  gradient checkpointing is set up without saving the RNG state (`enable_checkpointing`), which a capture could not
  read;
- a capturable optimizer: AdamW with `capturable=True` and the learning rate (and the clip threshold) in device
  tensors filled before each replay; its state tensors and the gradient are kept alive by this object and refilled
  in place when a rollback or a resume loaded new ones (`_bind_state`);
- no host sync inside the step: the step's loss comes back as a device tensor, read once after the update with the
  NaN and norm checks (core.training.guard), as in an eager step.

fp16 (a grad scaler that decides on the host whether to skip a step) and the optional optimizers are not captured;
`choose_compile` says so. On CPU `compile = on` is refused (core.models.device.compile_problem): torch's inductor
took 11 minutes to compile the tiny test model's step on the shared 2-core machine, ran it 2.5x slower than eager and
gave a different gradient (bench/RESULTS.md). The `static` implementation runs the captured step's code path (host
draws, static buffers, gradient and state binding) without capturing, which is how the CPU tests check it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import FieldError

IMPLS = ("cuda_graph", "compile")
DEFAULT_IMPL = "cuda_graph"
# Steps a capture needs to pay for itself: capture (or compile) seconds / seconds saved per step. UNMEASURED
# placeholders, set conservatively until bench/gpu_check's `capture` part measures them on a GPU: a hand capture
# costs a few warm-up steps (~100 steps' savings at 512 px), inductor's compile a minute or more.
BREAK_EVEN_STEPS = {"cuda_graph": 100, "compile": 1500}
AUTO_FACTOR = 2  # `auto` captures when the steps left are at least this many break-evens
MAX_GRAPHS = 8   # captured input shapes (buckets x batch sizes); further shapes run uncaptured
WARMUP_PASSES = 2


class CaptureFailed(Exception):
    """Capturing (or compiling) the step failed for a reason other than memory; the run can go on eager."""


@dataclass(frozen=True)
class CompileChoice:
    mode: str    # "eager", "cuda_graph" or "compile"
    reason: str  # in words, for the `compile` event and the monitor


def choose_compile(pref: str, *, device_type: str, precision: str, optimizer: str, steps_left: int,
                   impl: str = DEFAULT_IMPL, break_even: int | None = None) -> CompileChoice:
    """How the training step runs. `pref` "off": eager; "on": captured (FieldError naming `compile` where it
    cannot be); "auto": captured on CUDA when `steps_left` is at least AUTO_FACTOR x the capture's break-even."""
    from core.models.device import compile_problem

    if pref == "off":
        return CompileChoice("eager", "off (compile = off)")
    problem = compile_problem(device_type, pref)
    if problem:
        raise FieldError("compile", problem)
    if device_type != "cuda":
        return CompileChoice("eager", f"auto: eager on {device_type} (capturing needs a CUDA GPU)")
    blocker = None
    if precision == "fp16":
        blocker = ("fp16 trains with a gradient scaler, which decides on the host whether to skip each step; use "
                   "precision bf16 (GPUs of compute capability 8.0+) or fp32")
    elif optimizer != "adamw":
        blocker = f"optimizer {optimizer} is not capturable; use optimizer adamw"
    if blocker:
        if pref == "on":
            raise FieldError("compile", f"compile: on cannot capture this run: {blocker}, or compile off")
        return CompileChoice("eager", f"auto: eager ({blocker.split(';')[0]})")
    if pref == "on":
        return CompileChoice(impl, "on (compile = on)")
    needed = AUTO_FACTOR * (break_even if break_even is not None else BREAK_EVEN_STEPS[impl])
    if steps_left < needed:
        return CompileChoice("eager", f"auto: eager ({steps_left} steps left; capturing pays off from about "
                                      f"{needed} steps, an estimate not yet measured on a GPU)")
    return CompileChoice(impl, f"auto: captured ({steps_left} steps left; capturing pays off from about {needed} "
                               "steps, an estimate not yet measured on a GPU)")


# ---- the compile cache ----------------------------------------------------------------------------------------------
def compile_cache_dir(out_dir) -> Path:
    """Where torch's compile caches live, shared by every run beside this one: RUNS/.compile-cache (the runs folder
    travels with a pod's volume; ~/.cache often does not), else ~/.cache/tiwiz/compile when that is not writable."""
    shared = Path(out_dir).resolve().parent / ".compile-cache"
    try:
        shared.mkdir(parents=True, exist_ok=True)
        if os.access(shared, os.W_OK):
            return shared
    except OSError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tiwiz" / "compile"


def use_compile_cache(out_dir) -> Path:
    """Point inductor's and triton's on-disk caches at `compile_cache_dir` (unless the user set them), so a second
    run, or a resume, loads the compiled step instead of compiling it again. Call before the first compile."""
    folder = compile_cache_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    return folder


def enable_checkpointing(unet) -> None:
    """Gradient checkpointing of the frozen UNet, without saving and restoring the RNG state around each block: in
    eval mode the UNet draws no random numbers, and a CUDA graph capture cannot read the generator's state."""
    import torch.utils.checkpoint

    def checkpointed(module, *args):
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False,
                                                 preserve_rng_state=False)

    unet.enable_gradient_checkpointing(checkpointed)


def shape_text(inputs: dict) -> str:
    """'2x4x64x64' (the latents' shape): how events name a captured shape."""
    return "x".join(str(n) for n in inputs["latents"].shape)


# ---- one captured step ----------------------------------------------------------------------------------------------
class CapturedStep:
    """The forward/backward of one micro-batch and the update, replayed from static buffers.

    `loss_fn(buffers)` computes one micro-batch's loss (already divided by grad_accum) from device tensors named like
    the inputs `draw_inputs` returns. `clip` is the config's clip_grad ("none", "value", "norm"). `on_capture(shape,
    seconds, graphs)` is told about each capture (shape "update" for the update's). `impl`: "cuda_graph",
    "compile", or "static" (the same code path, nothing captured: CPU and tests)."""

    def __init__(self, loss_fn, vectors, optimizer, *, impl: str, clip: str = "none", on_capture=None,
                 max_graphs: int = MAX_GRAPHS) -> None:
        import torch

        self.loss_fn, self.vectors, self.optimizer = loss_fn, vectors, optimizer
        self.impl, self.clip, self.on_capture, self.max_graphs = impl, clip, on_capture, max_graphs
        self.device = vectors.device
        self.graphs: dict = {}       # shape key -> (graph or compiled fn, static inputs, static loss)
        self.uncaptured: set = set()  # shape keys past max_graphs
        self.capture_seconds = 0.0
        self._pool = None
        self._update_graph = None
        self.grad = torch.zeros_like(vectors)
        self._lr = torch.zeros((), dtype=torch.float32, device=self.device)
        self._clip_value = torch.zeros((), dtype=torch.float32, device=self.device)
        self._state: dict = {}  # the optimizer state tensors the update graph reads and writes
        self._compiled_loss = None

    # -- the gradient and the optimizer state, kept at fixed addresses ---------------------------------------------
    def begin_step(self) -> None:
        """Before a step's first micro-batch: the gradient buffer attached and zeroed (a rollback or a skipped step
        may have set `.grad` to None)."""
        if self.vectors.grad is not self.grad:
            self.vectors.grad = self.grad
        self.grad.zero_()

    def zero_grad(self) -> None:
        self.grad.zero_()

    def _bind_state(self) -> None:
        """Make the optimizer's state tensors the ones the update graph was captured with: created here before the
        first capture (as AdamW would on its first step, `step` on the device), and after a rollback or resume
        replaced them (`load_state_dict`), their values copied into the captured ones."""
        import torch

        state = self.optimizer.state[self.vectors]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=self.device)
            state["exp_avg"] = torch.zeros_like(self.vectors)
            state["exp_avg_sq"] = torch.zeros_like(self.vectors)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            value, held = state[key], self._state.get(key)
            if held is None:
                held = self._state[key] = value.to(device=self.device, dtype=torch.float32) if key == "step" \
                    else value
            elif value is not held:
                held.copy_(value.detach())
            state[key] = held

    # -- one micro-batch -------------------------------------------------------------------------------------------
    def micro(self, inputs: dict):
        """Run one micro-batch: its gradient added to the vectors' gradient; returns its loss (a new device tensor,
        not read here)."""
        key = tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(inputs.items()))
        if self.impl == "static" or key in self.uncaptured:
            return self._run_uncaptured(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                self.uncaptured.add(key)
                return self._run_uncaptured(inputs)
            entry = self._capture(key, inputs)
        if self.impl == "compile":
            import torch

            torch.compiler.cudagraph_mark_step_begin()
            loss = entry[0]({k: v.to(self.device, non_blocking=True) for k, v in inputs.items()})
            loss.backward()
            return loss.detach().clone()
        graph, static, static_loss = entry
        for name, value in inputs.items():
            static[name].copy_(value, non_blocking=True)
        graph.replay()
        return static_loss.clone()

    def _run_uncaptured(self, inputs: dict):
        buffers = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        loss = self.loss_fn(buffers)
        if loss.requires_grad:  # on the CPU the splice leaves no graph when no prompt held the trigger
            loss.backward()
        return loss.detach()

    def _capture(self, key, inputs: dict):
        import torch

        t0 = time.perf_counter()
        with _failures_as_capture_failed():
            if self.impl == "compile":
                if self._compiled_loss is None:
                    self._compiled_loss = torch.compile(self.loss_fn, mode="reduce-overhead", dynamic=False)
                self._warm_compiled(inputs)
                entry = (self._compiled_loss, None, None)
            else:
                entry = self._capture_graph(inputs)
        self.graphs[key] = entry
        seconds = time.perf_counter() - t0
        self.capture_seconds += seconds
        if self.on_capture is not None:
            self.on_capture(shape_text(inputs), seconds, len(self.graphs))
        return entry

    def _capture_graph(self, inputs: dict):
        """Warm up on a side stream (lazy initialisation, kernel choices), throw its gradient away, capture."""
        import torch

        static = {name: value.to(self.device).clone() for name, value in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self.loss_fn(static).backward()
        torch.cuda.current_stream().wait_stream(side)
        self.grad.zero_()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's blocks back, before the graph's pool takes its own
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_loss = self.loss_fn(static)
            static_loss.backward()
        self._pool = self._pool if self._pool is not None else graph.pool()
        return graph, static, static_loss.detach()

    def _warm_compiled(self, inputs: dict) -> None:
        """Compile (or load from the cache) and record the graphs of this shape: passes whose gradients are thrown
        away, so the run's state is untouched."""
        import torch

        for _ in range(WARMUP_PASSES + 1):  # cudagraph trees record on the second call and replay from the third
            torch.compiler.cudagraph_mark_step_begin()
            self._compiled_loss({k: v.to(self.device) for k, v in inputs.items()}).backward()
        self.grad.zero_()
        torch.cuda.synchronize()

    def discard(self) -> None:
        """Drop every captured graph and its memory pool (after running out of memory, or when gradient
        checkpointing was switched on): the next micro-batch of each shape captures again."""
        self.graphs.clear()
        self.uncaptured.clear()
        self._update_graph = self._compiled_loss = self._pool = None
        self.grad.zero_()

    # -- the update ------------------------------------------------------------------------------------------------
    def update(self, lr: float, clip_limit: float | None) -> None:
        """Clip the gradient and step the optimizer. `static`: the eager calls themselves (float lr and limit);
        captured: the update graph, with lr and the limit written into its device tensors first."""
        import torch

        if self.impl == "static":
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.clip == "value":
                torch.nn.utils.clip_grad_value_([self.vectors], clip_limit)
            elif self.clip == "norm":
                torch.nn.utils.clip_grad_norm_([self.vectors], clip_limit)
            self.optimizer.step()
            return
        self._bind_state()
        self._lr.fill_(lr)
        if clip_limit is not None:
            self._clip_value.fill_(clip_limit)
        groups = self.optimizer.param_groups
        for g in groups:  # what the captured AdamW reads; compile's guards see the same tensor at every call
            g["lr"], g["capturable"] = self._lr, True
        try:
            if self._update_graph is None:  # captured (or compiled) and run for the first time, timed
                t0 = time.perf_counter()
                with _failures_as_capture_failed():
                    self._capture_update()
                    self._run_update()
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                self.capture_seconds += seconds
                if self.on_capture is not None:
                    self.on_capture("update", seconds, len(self.graphs))
            else:
                self._run_update()
        finally:
            for g in groups:  # what a saved state records: loadable by an eager optimizer anywhere, CPU included
                g["lr"], g["capturable"] = lr, False

    def _run_update(self) -> None:
        import torch

        if self.impl == "compile":
            torch.compiler.cudagraph_mark_step_begin()
            self._update_graph()
        else:
            self._update_graph.replay()

    def _update_body(self) -> None:
        import torch

        grad = self.grad
        if self.clip == "value":
            grad.clamp_(min=-self._clip_value, max=self._clip_value)
        elif self.clip == "norm":  # torch.nn.utils.clip_grad_norm_'s arithmetic, with the limit in a tensor
            total = torch.linalg.vector_norm(grad, 2.0)
            grad.mul_(torch.clamp(self._clip_value / (total + 1e-6), max=1.0))
        self.optimizer.step()

    def _capture_update(self) -> None:
        import torch

        if self.impl == "compile":  # compiled at its first call, which is the step's real update
            self._update_graph = torch.compile(self._update_body, mode="reduce-overhead", dynamic=False)
            return
        graph = torch.cuda.CUDAGraph()
        # the AdamW step keeps nothing it allocates, so it shares the step graphs' pool
        with torch.cuda.graph(graph, pool=self._pool):
            self._update_body()
        self._pool = self._pool if self._pool is not None else graph.pool()
        self._update_graph = graph


@contextlib.contextmanager
def _failures_as_capture_failed():
    """A capture's own failure (an op that syncs, an unsupported op, a compiler error) as CaptureFailed; running out
    of memory stays what it is (the caller's out-of-memory handling applies)."""
    from core.training.memory_plan import is_out_of_memory

    try:
        yield
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        raise CaptureFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}") from exc
