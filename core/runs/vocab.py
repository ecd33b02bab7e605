"""The words of the run contract, each vocabulary once: the phases a run is in (`RunPhase`: status.json's `state`,
the `exit` event, `tiwiz runs`, the monitor), the commands a viewer drops into `commands/` (`Command`), why a
training ended (`EndReason`), the precisions, and what a suggested best step rests on. Older words are parsed to the
current ones. Torch-free and Textual-free; `core.runs.run_events` re-exports all of it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


# What a suggested best step rests on (`best_basis`), in words: the first that applies wins.
BEST_BASES = {
    "holdout": "lowest held-out loss",          # --holdout images held out: the argmin of their loss
    "flat": "validation loss flat",             # no hold-out: where the auto-stop rule found the loss flat
    "validation": "lowest validation loss",     # neither: the checkpointed step with the lowest validation loss
}


def best_step_text(step: int | None, basis: str | None) -> str:
    """'best step 240 (lowest held-out loss)', or '' without a best step."""
    if step is None:
        return ""
    words = BEST_BASES.get(basis or "")
    return f"best step {step}" + (f" ({words})" if words else "")


# ---- phases -------------------------------------------------------------------------------------------------------
class RunPhase(str, Enum):
    """Where a run is. The same words in status.json `state`, `tiwiz runs`, the monitor, the Start screen and the
    `exit` event."""

    STARTING = "starting"   # spawned; the worker has not started training yet
    RUNNING = "running"
    STOPPING = "stopping"   # asked to stop; saving
    STOPPED = "stopped"     # stopped on request (or by a signal) after saving; resumable
    FINISHED = "finished"   # trained every step
    FAILED = "failed"       # ended with an error
    KILLED = "killed"       # the worker died without a final word (kill -9, OOM killer, reboot); resumable
    DAMAGED = "damaged"     # the run folder cannot be read (a corrupt status.json ...); the reason says why
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__  # equal to its word, so it hashes like it too (dict keys, sets)

    @property
    def active(self) -> bool:
        return self in (RunPhase.STARTING, RunPhase.RUNNING, RunPhase.STOPPING)

    @property
    def final(self) -> bool:
        """The run is over (nothing more will be written to it until a resume)."""
        return self in (RunPhase.STOPPED, RunPhase.FINISHED, RunPhase.FAILED, RunPhase.KILLED)

    @classmethod
    def parse(cls, value: Any, default: "RunPhase | None" = None) -> "RunPhase":
        """The phase for a state word, older words included; `default` (UNKNOWN) for anything else."""
        if isinstance(value, RunPhase):
            return value
        if isinstance(value, str):
            word = _PHASE_ALIASES.get(value.strip().lower(), value.strip().lower())
            try:
                return cls(word)
            except ValueError:
                pass
        return default if default is not None else cls.UNKNOWN


_PHASE_ALIASES = {"interrupted": "stopped", "stop": "stopped", "waiting": "starting", "done": "finished",
                  "error": "failed"}


# ---- commands -----------------------------------------------------------------------------------------------------
class Command(str, Enum):
    """A request a viewer drops into RUN_DIR/commands/ as an empty file of this name; the worker consumes it between
    steps."""

    STOP = "stop"        # save, then stop (resumable)
    SAVE = "save"        # save a checkpoint now
    PREVIEW = "preview"  # render a preview now

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__

    @classmethod
    def parse(cls, name: Any) -> "Command | None":
        """The command a file name asks for (older names included), None for anything else."""
        if isinstance(name, Command):
            return name
        if not isinstance(name, str):
            return None
        name = _COMMAND_ALIASES.get(name, name)
        try:
            return cls(name)
        except ValueError:
            return None


_COMMAND_ALIASES = {"save-now": "save", "preview-now": "preview"}


# ---- end reasons --------------------------------------------------------------------------------------------------
class EndReason(str, Enum):
    """Why a training ended without an error: the `reason` of `finished` (steps, auto_stop) and of `stopped` (stop,
    interrupted), and of the trainer's outcome."""

    STEPS = "steps"              # trained every step
    AUTO_STOP = "auto_stop"      # the auto-stop rule found the validation loss flat
    STOP = "stop"                # a stop command
    INTERRUPTED = "interrupted"  # a signal (SIGTERM, SIGINT)

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__

    @property
    def finished(self) -> bool:
        """The run reached its end (every step, or the auto-stop rule); otherwise it stopped early, resumable."""
        return self in (EndReason.STEPS, EndReason.AUTO_STOP)

    @classmethod
    def parse(cls, value: Any) -> "EndReason | None":
        if isinstance(value, EndReason):
            return value
        try:
            return cls(value)
        except (ValueError, TypeError):
            return None


PRECISIONS = ("bf16", "fp16", "fp32")
_PRECISION_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                      "torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}


def precision_name(value: Any) -> str:
    """`bf16`/`fp16`/`fp32` for a torch dtype or any of its older names ("" for None)."""
    if value is None:
        return ""
    text = str(value).strip().lower()
    return _PRECISION_ALIASES.get(text, text)
