"""Gradient checkpointing `auto`, and out-of-memory at a step. Torch-free: the decision is a pure function of memory
figures (measured by `core.models.device.cuda_memory` once the model is on the GPU), so every choice is testable on
a CPU.

The activation model. A training step keeps the UNet's activations for the backward pass; they grow with the latent
positions (width/8 x height/8) and the batch. Measured on an H200 (bench/RESULTS.md, bf16, batch 1), step peak
minus the bf16 weights:

- SD1.5, 512 px (4,096 positions): 3.07 - 1.99 GiB = 1.08 GiB, about 277 KiB a position without checkpointing;
- SDXL, 1024 px (16,384 positions): 13.0 - 6.46 GiB = 6.5 GiB (428 KiB a position) without, 7.5 - 6.46 GiB = 1.04 GiB
  (67 KiB a position) with it.

The model rounds these up (ACTIVATION_KIB) and then adds half again (SAFETY), a fixed reserve for the allocator's
fragmentation, cuBLAS workspaces and a captured graph's pool (RESERVE_GIB), and room for a preview render (VAE decode
and a CFG UNet pass at the training size: PREVIEW_GIB_PER_MEGAPIXEL): a captured step keeps its activation memory
reserved while a preview renders, so both must fit at once. Checkpointing stays off when that total fits in
FIT_FRACTION of the free memory. A 24 GiB card at SDXL 1024 px batch 1 bf16 has about 17 GiB free once the
weights are loaded, against a modelled 15.2 GiB (the measured need is about 10): off on an idle card, on as soon as
half a GiB is taken by something else. Should the model still be short, an out-of-memory step under `auto` turns
checkpointing on and retries the step (`retry_with_checkpointing`), so the default settings never end a run for memory.

gpu_check's `gc` part measures the real peaks beside this model's figures, so the constants can be tightened on
measured data.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
KIB = 2 ** 10
# KiB of saved activations per latent position and image, at 2-byte (bf16/fp16) activations: (without, with)
# checkpointing. SD1/SD2 "with" is not measured: the SDXL ratio (1/6) rounded up to 1/4.
ACTIVATION_KIB = {"sd1": (300, 75), "sd2": (330, 85), "sdxl": (450, 75)}
SAFETY = 1.5                 # the model's figures are multiplied by this
RESERVE_GIB = 1.5            # fragmentation, cuBLAS workspaces, a captured graph's pool bookkeeping
PREVIEW_GIB_PER_MEGAPIXEL = 3.0  # a preview at the training size: VAE decode + a batch-2 (CFG) UNet pass, no grad
FIT_FRACTION = 0.9           # of the free memory: what may be planned for
ACTIVATION_BYTES = {"bf16": 1.0, "fp16": 1.0, "fp32": 2.0}  # relative to 2-byte activations


@dataclass(frozen=True)
class CheckpointingChoice:
    on: bool
    reason: str                      # in words, for the `memory_plan` event and the monitor
    need_without_gib: float | None = None  # the modelled need without checkpointing (GiB), where it was modelled
    free_gib: float | None = None


def activation_bytes(family: str, width: int, height: int, batch: int, precision: str, checkpointing: bool) -> int:
    """Modelled bytes of saved activations of one step (SAFETY included)."""
    without, with_ = ACTIVATION_KIB.get(family, ACTIVATION_KIB["sdxl"])
    per_position = (with_ if checkpointing else without) * KIB * ACTIVATION_BYTES.get(precision, 2.0)
    positions = (width // 8) * (height // 8)
    return int(per_position * positions * max(1, batch) * SAFETY)


def step_need_bytes(family: str, width: int, height: int, batch: int, precision: str, checkpointing: bool,
                    previews: bool = True) -> int:
    """Modelled bytes a training step needs beyond the loaded weights: activations, the reserve and (with previews)
    room for a preview render at the training size."""
    need = activation_bytes(family, width, height, batch, precision, checkpointing) + RESERVE_GIB * GIB
    if previews:
        need += PREVIEW_GIB_PER_MEGAPIXEL * GIB * width * height / 1e6
    return int(need)


def choose_checkpointing(pref: str, *, device_type: str, family: str, width: int, height: int, batch: int,
                         precision: str, free_bytes: int | None, previews: bool = True) -> CheckpointingChoice:
    """Whether the UNet recomputes its activations in the backward pass. `pref` "on"/"off" force it; "auto" turns it
    on only on CUDA and only when the modelled need without it does not fit FIT_FRACTION of `free_bytes` (the free
    GPU memory with the model loaded; None: unknown, which counts as not fitting)."""
    if pref == "on":
        return CheckpointingChoice(True, "on (gradient_checkpointing = on)")
    if pref == "off":
        return CheckpointingChoice(False, "off (gradient_checkpointing = off)")
    if device_type != "cuda":
        return CheckpointingChoice(False, f"auto: off on {device_type} (memory is not what limits a step there, and "
                                          "recomputing costs time)")
    need = step_need_bytes(family, width, height, batch, precision, False, previews)
    size = f"{family} at {width}x{height}, batch {batch}, {precision}"
    if free_bytes is None:
        return CheckpointingChoice(True, f"auto: on (the free GPU memory could not be read; {size})",
                                   round(need / GIB, 2))
    free_gib, need_gib = free_bytes / GIB, need / GIB
    if need <= FIT_FRACTION * free_bytes:
        return CheckpointingChoice(False, f"auto: off: a step of {size} needs about {need_gib:.1f} GiB without it "
                                          f"(modelled, with margin) and {free_gib:.1f} GiB are free",
                                   round(need_gib, 2), round(free_gib, 2))
    return CheckpointingChoice(True, f"auto: on: a step of {size} would need about {need_gib:.1f} GiB without it "
                                     f"(modelled, with margin) and only {free_gib:.1f} GiB are free",
                               round(need_gib, 2), round(free_gib, 2))


def retry_with_checkpointing(pref: str, checkpointing_on: bool) -> bool:
    """After an out-of-memory step: turn checkpointing on and retry the step (only when `auto` left it off)."""
    return pref == "auto" and not checkpointing_on


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (torch.cuda.OutOfMemoryError), or a RuntimeError that says CUDA ran out of memory (a
    capture or a cuBLAS call can raise those)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() and
                                              ("CUDA" in text or "cuda" in text or "CUBLAS_STATUS_ALLOC" in text))


def out_of_memory_message(step: int, *, batch: int, width: int, height: int, checkpointing_on: bool,
                          saved_step: int | None, free_gib: float | None = None) -> str:
    """What to change after a step ran out of GPU memory, and where the run resumes from."""
    changes = []
    if batch > 1:
        changes.append(f"a smaller batch_size (now {batch})")
    changes.append(f"a smaller width/height (now {width}x{height})")
    if not checkpointing_on:
        changes.append("gradient_checkpointing on")
    free = f" ({free_gib:.1f} GiB were free)" if free_gib is not None else ""
    where = (f"The state of step {saved_step} is saved: change the setting and resume the run to continue from it."
             if saved_step is not None and saved_step > 0 else
             "No step was trained yet: change the setting and start again (or resume: it starts from step 0).")
    return (f"out of GPU memory at step {step + 1}{free}. Try {', or '.join(changes)}; a preview size "
            f"(preview_width/preview_height) or other programs on the GPU can also take memory. {where}")
