"""What the validation loss says about a run: the auto-stop rule (`core.training.autostop`), the held-out loss's low
and the suggested best step. Torch-free; the trainer feeds it every validation and every checkpoint.

The best step rests on the first that applies (run_events.BEST_BASES): the lowest held-out loss, else where the
auto-stop rule found the loss flat, else the checkpointed step with the lowest validation loss (a rule that never
fired leaves the loss still moving; a step without its file could not be copied).
"""

from __future__ import annotations

from pathlib import Path

from core.runs.autostop_state import AutoStopState
from core.runs.lossfile import read_loss_csv
from core.training.autostop import AutoStop


class Watch:
    def __init__(self, window: int, threshold: float) -> None:
        self.rule = AutoStop(window, threshold)
        self.state: AutoStopState | None = None        # the rule after the latest validation
        self.last: tuple[int, float, float | None] | None = None  # (step, val_loss, holdout_loss) of the latest
        self.best_holdout: tuple[int, float] | None = None          # (step, holdout_loss): its lowest
        self.best_val_checkpoint: tuple[int, float] | None = None   # (step, val_loss): the lowest checkpointed one
        self.new_best = False  # the latest validation set a new held-out low (after step 0)

    def observe(self, step: int, val: float, holdout: float | None) -> AutoStopState:
        """Fold in one validation (of the vectors a checkpoint would save)."""
        self.last = (step, val, holdout)
        self.state = self.rule.update(step, val)
        self.new_best = False
        if holdout is not None and (self.best_holdout is None or holdout < self.best_holdout[1]):
            self.new_best = self.best_holdout is not None or step > 0
            self.best_holdout = (step, holdout)
        return self.state

    @property
    def stop(self) -> bool:
        """The rule fired at the latest validation (only its first firing)."""
        return self.state is not None and self.state.stop

    def save_due(self, step: int, last_saved_step: int) -> bool:
        """A checkpoint is due where the suggested best step lands, so it can be copied: a new held-out low, or the
        step where the auto-stop rule first finds the loss flat."""
        if last_saved_step == step or step == 0:
            return False
        return self.new_best or self.stop

    def checkpointed(self, step: int) -> None:
        """A checkpoint was written at `step`; a validation there may be the lowest checkpointed one."""
        if self.last is not None and self.last[0] == step and (self.best_val_checkpoint is None
                                                                or self.last[1] < self.best_val_checkpoint[1]):
            self.best_val_checkpoint = (step, self.last[1])

    def best(self, out_dir: Path, name: str) -> tuple[int | None, str | None, str | None]:
        """(the suggested best step, its .safetensors checkpoint relative to `out_dir` if it is there, its basis)."""
        if self.best_holdout is not None:
            step, basis = self.best_holdout[0], "holdout"
        elif self.rule.fired_at is not None:
            step, basis = self.rule.fired_at, "flat"
        elif self.best_val_checkpoint is not None:
            step, basis = self.best_val_checkpoint[0], "validation"
        else:
            return None, None, None
        rel = f"embeddings/{name}-{step}.safetensors"
        return step, rel if (Path(out_dir) / rel).is_file() else None, basis

    def is_new_best_at(self, step: int) -> bool | None:
        """True when the checkpoint at `step` is saved for a new held-out low (the Checkpoint event's `best`)."""
        return True if self.new_best and self.best_holdout[0] == step else None

    # resume: travels in state/latest.pt
    def state_dict(self) -> dict:
        return {"autostop": self.rule.state_dict(),
                "best_holdout": list(self.best_holdout) if self.best_holdout is not None else None,
                "best_val_checkpoint": list(self.best_val_checkpoint) if self.best_val_checkpoint is not None else None}

    def load_state_dict(self, state: dict, out_dir: Path, name: str, step: int) -> None:
        self.rule.load_state_dict(state.get("autostop"))
        self.best_holdout = tuple(state["best_holdout"]) if state.get("best_holdout") else None
        self.best_val_checkpoint = tuple(state["best_val_checkpoint"]) if state.get("best_val_checkpoint") else \
            best_val_checkpoint_on_disk(out_dir, name, step)


def best_val_checkpoint_on_disk(out_dir: Path, name: str, until_step: int) -> tuple[int, float] | None:
    """`best_val_checkpoint` of a run whose state predates it: from loss.csv and the checkpoint files there."""
    out_dir = Path(out_dir)
    try:
        rows = read_loss_csv(out_dir / "loss.csv")
    except (OSError, UnicodeDecodeError):
        return None
    saved = [(r["val_loss"], r["step"]) for r in rows if r["val_loss"] is not None and 0 < r["step"] <= until_step
             and (out_dir / f"embeddings/{name}-{r['step']}.safetensors").is_file()]
    return (min(saved)[1], min(saved)[0]) if saved else None
