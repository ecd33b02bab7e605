"""The run contract: every event a training run writes to `events.jsonl`, the run phases, and the commands a viewer
drops into `commands/`. Torch-free and Textual-free: the worker, the CLI and the TUI all import it.

One frozen dataclass per event type. The trainer and the worker build them (`Step(step=3, max_steps=100, loss=0.1)`),
`to_json()` gives the dict written as one line of `events.jsonl`, and `parse(dict | str | bytes)` reads a line back:

- it accepts the older names (event types `interrupted`/`stop` -> `stopped`; the field `dtype` -> `precision`; the
  precision values `bfloat16`/`float16`/`float32` -> `bf16`/`fp16`/`fp32`; states `interrupted`/`stop` -> `stopped`);
- it ignores unknown fields, and returns None for unknown event types (a newer writer);
- a field of the wrong type never raises: the event is skipped and `parse` returns a `Warning` event saying so
  (with `skipped` set to the type of the dropped event), which every viewer shows like any other warning.

Adding a field (e.g. a GPU figure on `Step`, the model family on `Started`):
1. add it to the dataclass below WITH A DEFAULT, and a `help` in its metadata:
       gpu_temp: float | None = field(default=None, metadata={"help": "GPU temperature, Celsius"})
   Supported types: int, float, str, bool, RunPhase, `X | None` of those, `list[...]` and `dict[...]` (checked
   shallowly: a list must be a list). Fields whose value is None are left out of the JSON line.
2. emit it where the event is built (`core/training/trainer.py` or `core/runs/worker.py`);
3. if a viewer needs it folded, read it in `core.runs.run_state.RunState` (one place).
Old logs without the field still parse (the default is used). Never rename or retype a field: add a new one and map
the old name in `_FIELD_ALIASES` if you must. A new event type: a new dataclass with `TYPE`, registered by the
`@_event` decorator; it then appears in `EVENT_TYPES` and in the generated run-folder reference.

For the reference docs: `EVENT_TYPES` maps each `type` to its class; `describe_event_types()` lists every type with
its doc line and fields (name, type, required, default, help).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from core.runs.contract import Bad, describe_fields, help_field as _help, now as _now, parser, record_json
from core.runs.vocab import (  # noqa: F401 - the contract's words, importable from here as ever
    BEST_BASES, PRECISIONS, Command, EndReason, RunPhase, best_step_text, precision_name)


# ---- events -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """Base of every event. `TYPE` is the `type` of its JSON line."""

    TYPE: ClassVar[str] = ""
    time: float = _help("unix time the event was written (seconds, ms precision)", factory=_now)

    def to_json(self) -> dict:
        """The JSON object of one events.jsonl line: `type` first, fields whose value is None left out."""
        return record_json(self, {"type": self.TYPE})

    def to_line(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, separators=(",", ":"))


EVENT_TYPES: dict[str, type[RunEvent]] = {}


def _event(cls):
    EVENT_TYPES[cls.TYPE] = cls
    return cls


@_event
@dataclass(frozen=True, kw_only=True)
class Started(RunEvent):
    """The trainer loaded the model and the data and begins (or resumes) training."""

    TYPE: ClassVar[str] = "started"
    step: int = _help("the step training begins at: 0, or the checkpoint a resume continues from", 0)
    max_steps: int = _help("the step training ends at", 0)
    name: str = _help("the embedding's name (its trigger word)", "")
    device: str = _help("the torch device, e.g. cuda:0 or cpu", "")
    precision: str = _help("the autocast precision: bf16, fp16 or fp32", "")
    n_images: int = _help("training images", 0)
    model: str = _help("the base model's name", "")
    family: str | None = _help("the base model's family: sd1, sd2 or sdxl (the embedding's format follows it)", None)
    resumed: bool = _help("true when this continues an earlier life of the run", False)
    n_holdout: int | None = _help("training images held out (never trained on; their validation loss is "
                                  "`holdout_loss`)", None)
    auto_stop: bool | None = _help("whether the auto-stop rule ends the run (it is watched either way)", None)
    auto_stop_window: int | None = _help("the auto-stop rule's window, steps", None)
    threads: int | None = _help("CPU threads torch uses (chosen from the free cores unless configured)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Step(RunEvent):
    """One optimizer step done."""

    TYPE: ClassVar[str] = "step"
    step: int = _help("the step just done (1-based)")
    max_steps: int = _help("the step training ends at", 0)
    epoch: int = _help("passes over the data begun so far", 0)
    loss: float | None = _help("this step's training loss", None)
    loss_avg: float | None = _help("exponential moving average of the loss (weight 0.05)", None)
    lr: float | None = _help("the learning rate used for this step", None)
    it_s: float | None = _help("optimizer steps per second (the last 20 steps)", None)
    elapsed: float | None = _help("training seconds so far, earlier lives included", None)
    gpu_mem_used: int | None = _help("GPU memory in use on the device, bytes (CUDA only, every ~2 s)", None)
    gpu_mem_total: int | None = _help("GPU memory of the device, bytes (CUDA only)", None)
    gpu_util: float | None = _help("GPU utilisation, percent (CUDA with NVML only)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Validation(RunEvent):
    """The validation loss: fixed images, timesteps, noise and prompts, so it is comparable along the run."""

    TYPE: ClassVar[str] = "validation"
    step: int = _help("the step it was measured at (0 = before training)")
    val_loss: float = _help("the mean validation loss")
    holdout_loss: float | None = _help("the same loss on the held-out images (never trained on); rises when the "
                                       "embedding overfits", None)
    best_step: int | None = _help("the suggested best step so far: lowest holdout_loss, else where the auto-stop "
                                  "rule found the loss flat, else the checkpointed step with the lowest val_loss", None)
    best_basis: str | None = _help("what best_step rests on: 'holdout' (lowest held-out loss), 'flat' (where the "
                                   "auto-stop rule found the validation loss flat) or 'validation' (the checkpointed "
                                   "step with the lowest validation loss)", None)
    auto_stop_ratio: float | None = _help("auto-stop rule: variance of val_loss over the last window / its variance "
                                          "over the whole run (null until a window is full)", None)
    auto_stop_watched: int | None = _help("auto-stop rule: steps of validation history, capped at the window "
                                          "('watching k of W steps')", None)
    auto_stop_window: int | None = _help("auto-stop rule: the window, steps", None)
    auto_stop_threshold: float | None = _help("auto-stop rule: the ratio below which the loss counts as flat", None)
    auto_stop_fired_at: int | None = _help("auto-stop rule: the first step where the loss was flat", None)
    editability: float | None = _help("mean cosine similarity of the text encoder's outputs for the words around the "
                                      "embedding in a few fixed prompts ('[name] in the desert') against the same "
                                      "prompts with the init text: 1 = the prompt reads as with the init text; an "
                                      "inflated or runaway embedding lowers it (text encoder only, no sampling)",
                                      None)


@_event
@dataclass(frozen=True, kw_only=True)
class Checkpoint(RunEvent):
    """A checkpoint was saved: the embedding at this step and state/latest.pt (what a resume continues from)."""

    TYPE: ClassVar[str] = "checkpoint"
    step: int = _help("the step saved")
    pt: str = _help("the A1111 .pt file, relative to the run folder", "")
    safetensors: str = _help("the .safetensors file, relative to the run folder", "")
    norms: list[float] | None = _help("each vector's L2 norm", None)
    nearest: list[list] | None = _help("each vector's nearest vocabulary tokens: [[token, cosine], ...] per vector",
                                       None)
    vocab_median_norm: float | None = _help("the median norm of the vocabulary's token embeddings (a norm far above "
                                            "it swamps the prompt)", None)
    best: bool | None = _help("true when saved because the held-out loss reached a new low", None)
    best_step: int | None = _help("the suggested best step after this checkpoint (as in `validation`)", None)
    best_basis: str | None = _help("what best_step rests on: 'holdout' (lowest held-out loss), 'flat' (where the "
                                   "auto-stop rule found the validation loss flat) or 'validation' (the checkpointed "
                                   "step with the lowest validation loss)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Preview(RunEvent):
    """A preview image was rendered."""

    TYPE: ClassVar[str] = "preview"
    step: int = _help("the step it shows")
    path: str = _help("the PNG, relative to the run folder")


@_event
@dataclass(frozen=True, kw_only=True)
class PreviewRendering(RunEvent):
    """The worker began rendering a preview (a `preview` event, or a warning if it fails, follows)."""

    TYPE: ClassVar[str] = "preview_rendering"
    step: int = _help("the step it will show")


@_event
@dataclass(frozen=True, kw_only=True)
class Warning(RunEvent):  # noqa: A001 - the contract's name; use it as run_events.Warning
    """Something the user should know; training goes on."""

    TYPE: ClassVar[str] = "warning"
    message: str = _help("what happened, in words")
    step: int | None = _help("the step it happened at, when known", None)
    skipped: str | None = _help("set by readers (never written): the type of an event that was dropped because a "
                                "field had the wrong type", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Error(RunEvent):
    """Training failed; an `exit` event with state failed follows."""

    TYPE: ClassVar[str] = "error"
    message: str = _help("what failed, and what to do about it")


@_event
@dataclass(frozen=True, kw_only=True)
class Stopping(RunEvent):
    """A stop was asked for (commands/stop, SIGTERM, SIGINT): the trainer saves, then emits `stopped`."""

    TYPE: ClassVar[str] = "stopping"
    step: int = _help("the last step done", 0)
    reason: str = _help("why: 'stop requested', 'SIGTERM received', ...", "")


@_event
@dataclass(frozen=True, kw_only=True)
class Stopped(RunEvent):
    """Training stopped before its last step, after saving (resumable)."""

    TYPE: ClassVar[str] = "stopped"
    step: int = _help("the step it stopped at")
    reason: EndReason = _help("the trainer's reason: 'stop' (a stop command) or 'interrupted' (a signal)",
                              EndReason.STOP)
    pt: str = _help("the final NAME.pt, relative to the run folder", "")
    safetensors: str = _help("the final NAME.safetensors, relative to the run folder", "")
    best_step: int | None = _help("the suggested best step (lowest held-out loss, else the auto-stop rule's, else "
                                  "the checkpointed step with the lowest validation loss)", None)
    best_checkpoint: str | None = _help("the .safetensors checkpoint of best_step, relative to the run folder", None)
    best_basis: str | None = _help("what best_step rests on: 'holdout' (lowest held-out loss), 'flat' (where the "
                                   "auto-stop rule found the validation loss flat) or 'validation' (the checkpointed "
                                   "step with the lowest validation loss)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Finished(RunEvent):
    """Training reached its last step and saved the final embedding."""

    TYPE: ClassVar[str] = "finished"
    step: int = _help("the last step")
    pt: str = _help("the final NAME.pt, relative to the run folder", "")
    safetensors: str = _help("the final NAME.safetensors, relative to the run folder", "")
    reason: EndReason | None = _help("why it ended: 'steps' (trained every step) or 'auto_stop' (the validation "
                                     "loss went flat: the auto-stop rule)", None)
    message: str | None = _help("the reason in words", None)
    best_step: int | None = _help("the suggested best step (lowest held-out loss, else the auto-stop rule's, else "
                                  "the checkpointed step with the lowest validation loss)", None)
    best_checkpoint: str | None = _help("the .safetensors checkpoint of best_step, relative to the run folder", None)
    best_basis: str | None = _help("what best_step rests on: 'holdout' (lowest held-out loss), 'flat' (where the "
                                   "auto-stop rule found the validation loss flat) or 'validation' (the checkpointed "
                                   "step with the lowest validation loss)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class Compile(RunEvent):
    """How the training step runs (eager, or captured as CUDA graphs: the `compile` setting), and what each capture
    cost: one event for the choice when training begins, then one per captured input shape."""

    TYPE: ClassVar[str] = "compile"
    step: int = _help("the step it applies from", 0)
    mode: str = _help("eager (op by op), cuda_graph (captured with torch.cuda.CUDAGraph) or compile "
                      "(torch.compile, reduce-overhead)", "eager")
    reason: str = _help("why this mode, in words: the setting, auto's reasoning, or a capture that failed", "")
    seconds: float | None = _help("seconds this capture or compile took, warm-up included (null for the choice)",
                                  None)
    shape: str | None = _help("the input shape captured: the latents' batch x channels x height x width", None)
    graphs: int | None = _help("input shapes captured so far (one graph per bucket and batch size)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class MemoryPlan(RunEvent):
    """Whether the UNet's activations are recomputed in the backward pass (the `gradient_checkpointing` setting),
    and why: chosen when training begins, or switched on after a step ran out of GPU memory."""

    TYPE: ClassVar[str] = "memory_plan"
    step: int = _help("the step it applies from", 0)
    gradient_checkpointing: bool = _help("whether gradient checkpointing is on", False)
    reason: str = _help("why, in words", "")
    need_gib: float | None = _help("modelled GPU memory a step needs without checkpointing, GiB (auto on CUDA)", None)
    free_gib: float | None = _help("free GPU memory with the model loaded, GiB (auto on CUDA)", None)


@_event
@dataclass(frozen=True, kw_only=True)
class ImagesRanked(RunEvent):
    """The training images were ranked by how well the final embedding fits them, against each other (the images
    that fight the concept); the whole ranking is in `path`."""

    TYPE: ClassVar[str] = "images_ranked"
    step: int = _help("the step of the embedding ranked with")
    path: str = _help("the ranking (image_ranking.json), relative to the run folder", "image_ranking.json")
    n_images: int = _help("images ranked", 0)
    flagged: list[str] = _help("the images that fight the concept, worst first (paths)", factory=list)
    reasons: list[str] = _help("for each flagged image, what to do about it, in words", factory=list)


@_event
@dataclass(frozen=True, kw_only=True)
class Exit(RunEvent):
    """The worker's last word, written just before it exits (never by an in-process training)."""

    TYPE: ClassVar[str] = "exit"
    state: RunPhase = _help("finished, stopped or failed")
    step: int = _help("the last step done", 0)
    reason: str = _help("why it stopped or failed ('' when finished)", "")


# ---- reading ------------------------------------------------------------------------------------------------------
_TYPE_ALIASES = {"interrupted": "stopped", "stop": "stopped"}
_FIELD_ALIASES: dict[str, dict[str, str]] = {"started": {"dtype": "precision"}}
_VALUE_FIXES: dict[str, dict[str, Any]] = {"started": {"precision": precision_name}}
_NEVER_READ = {"warning": ("skipped",)}  # readers' marker, never taken from a file


def parse(obj: dict | str | bytes) -> RunEvent | None:
    """The typed event for one events.jsonl line (a dict, or its JSON text). Never raises: an unreadable line or a
    field of the wrong type gives a `Warning` with `skipped` set; an unknown event type gives None."""
    if isinstance(obj, (str, bytes, bytearray)):
        try:
            obj = json.loads(obj)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            return Warning(message=f"skipped an unreadable event line ({reason})", skipped="?")
    if not isinstance(obj, dict):
        return Warning(message="skipped an event line that is not a JSON object", skipped="?")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return Warning(message="skipped an event without a type", skipped="?")
    kind = _TYPE_ALIASES.get(kind, kind)
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None
    aliases = _FIELD_ALIASES.get(kind)
    data = {aliases.get(k, k): v for k, v in obj.items()} if aliases else obj
    parse_one = _PARSERS.get(cls) or _PARSERS.setdefault(
        cls, parser(cls, _VALUE_FIXES.get(kind), _NEVER_READ.get(kind, ())))
    try:
        return parse_one(data)
    except Bad as bad:
        return _skipped(kind, obj, str(bad))


_PARSERS: dict[type, Any] = {}


def _skipped(kind: str, obj: dict, why: str) -> Warning:
    step = obj.get("step")
    where = f" at step {step}" if isinstance(step, int) and not isinstance(step, bool) else ""
    return Warning(message=f"skipped a {kind!r} event{where}: {why}", skipped=kind,
                   time=obj["time"] if isinstance(obj.get("time"), (int, float)) else _now())


def parse_all(objs) -> list[RunEvent]:
    """Typed events for many lines; unknown types dropped, bad ones turned into skip warnings."""
    out = []
    for obj in objs:
        event = obj if isinstance(obj, RunEvent) else parse(obj)
        if event is not None:
            out.append(event)
    return out


def as_event(event: RunEvent | dict) -> RunEvent | None:
    """A typed event for a typed event or a dict (what sinks and followers hand around)."""
    return event if isinstance(event, RunEvent) else parse(event)


def describe_event_types() -> list[dict]:
    """Every event type with its fields, for the generated run-folder reference:
    [{"type", "doc", "fields": [{"name", "type", "required", "default", "help"}]}]."""
    return [{"type": kind, "doc": (cls.__doc__ or "").strip(), "fields": describe_fields(cls, skip=("skipped",))}
            for kind, cls in EVENT_TYPES.items()]
