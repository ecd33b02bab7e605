"""The NaN/norm guard: a step is kept only when its loss is finite and its vectors are finite and not blown up;
otherwise it is undone.

- After every kept step the vectors, the optimizer and the grad scaler are snapshotted (`snapshot`); a bad step rolls
  back to that snapshot. A finite step can still poison the state (norms of 1e30 give NaN on every retry), so a
  vector longer than NORM_LIMIT_FACTOR x the longest token of its encoder's vocabulary counts as bad too.
- Every ROLLBACK_TO_CHECKPOINT_AFTER bad steps in a row roll back to the last checkpoint instead and halve the
  learning rate (`Session.lr_scale`, saved in the state); max_nan_steps in a row end the run with an error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from core.errors import TiwizError
from core.runs import run_events as ev

NORM_LIMIT_FACTOR = 100.0  # a vector this many times longer than the longest vocabulary token is diverging
ROLLBACK_TO_CHECKPOINT_AFTER = 3  # bad steps in a row before rolling back to the checkpoint and halving the lr


@dataclass
class GuardState:
    limits: list              # [(columns, norm limit)] per text encoder
    good: dict                # the snapshot after the last kept step
    checkpoint: tuple         # (step, snapshot) of the last checkpoint: where repeated failures roll back to
    streak: int = 0           # bad steps in a row
    only_nan: bool = True     # every bad step of the streak had a NaN/inf loss (none only blew the vectors up)


def start(s) -> GuardState:
    """The guard of session `s` as it stands now (after setup and any resume)."""
    limits = [(slot.columns, NORM_LIMIT_FACTOR * float(slot.encoder.get_input_embeddings().weight.detach()
                                                       .float().norm(dim=1).max()))
              for slot in s.slots]
    good = snapshot(s)
    return GuardState(limits, good, (s.step, good))


def judge(s, total) -> float | None:
    """The loss of the step just applied (`total`: update.train_step's summed loss, None when it applied nothing),
    from one read of the device, when the step can be kept. Otherwise the step is undone, a warning says so and None
    comes back; the max_nan_steps-th bad step in a row raises TiwizError."""
    g = s.guard
    why = "loss was NaN/inf"
    loss, blown = outcome(s, total) if total is not None else (None, None)
    if loss is not None and blown is not None:
        loss, g.only_nan = None, False
        why = (f"the vectors' norm reached {blown[0]:.3g}, over {NORM_LIMIT_FACTOR:g}x the largest in the "
               f"vocabulary ({blown[1] / NORM_LIMIT_FACTOR:.3g})")
    if loss is not None:
        return loss
    g.streak += 1
    failing = s.step + 1  # the step that failed; the same number in the warning and the error
    if g.streak % ROLLBACK_TO_CHECKPOINT_AFTER == 0:
        ckpt_step, snap = g.checkpoint
        restore(s, snap)
        g.good = snap
        s.lr_scale *= 0.5
        done = (f"vectors rolled back to the checkpoint at step {ckpt_step} and the learning rate halved "
                f"(now {s.lr_scale:g}x the schedule's)")
    else:
        restore(s, g.good)
        done = "step skipped and vectors rolled back to the last good state"
    s.sink.emit(ev.Warning(step=failing, message=(
        f"{why} at step {failing}; {done} ({g.streak}/{s.config.max_nan_steps} in a row)")))
    if g.streak >= s.config.max_nan_steps:
        what = "the loss was NaN/inf" if g.only_nan else "training diverged (NaN/inf loss or blown-up vectors)"
        raise TiwizError(f"{what} for {g.streak} steps in a row at step {failing}; {_what_is_left(s)}")
    return None


def _what_is_left(s) -> str:
    if s.last_saved_step > 0:
        return (f"lower the learning rate (lr) or try another init text. The last good checkpoint (step "
                f"{s.last_saved_step}) in embeddings/ is intact.")
    return ("no checkpoint was saved yet, so nothing was kept: lower the learning rate (lr) or try another init text "
            "and start the run again.")


def kept(s) -> None:
    """A step was kept: the streak ends and its state is the new last good one."""
    g = s.guard
    g.streak, g.only_nan = 0, True
    g.good = snapshot(s)


def checkpointed(s) -> None:
    """A checkpoint was written at s.step: repeated failures now roll back to it."""
    s.guard.checkpoint = (s.step, snapshot(s))


def outcome(s, total) -> tuple[float | None, tuple[float, float] | None]:
    """(loss, blow-up) of a step, from one read of the device: the loss (None if it or the vectors are not finite)
    and, for finite ones, (largest norm, limit) when a vector is over its encoder's limit."""
    vectors = s.vectors.detach().float()
    limits = s.guard.limits
    figures = torch.stack([total.float().reshape(()), torch.isfinite(vectors).all().float(),
                           *[vectors[:, columns].norm(dim=1).max() for columns, _ in limits]]).tolist()
    loss, finite, tops = figures[0], figures[1], figures[2:]
    if not (finite and abs(loss) != float("inf") and loss == loss):
        return None, None
    for top, (_, limit) in zip(tops, limits):
        if not top <= limit:
            return loss, (top, limit)
    return loss, None


def snapshot(s) -> dict:
    """The vectors, optimizer and scaler state: tensors cloned directly (copy.deepcopy of the optimizer state costs
    milliseconds of Python per step)."""
    return {"vectors": s.vectors.detach().clone(), "optimizer": _cloned(s.optimizer.state_dict()),
            "scaler": s.scaler.state_dict()}


def restore(s, snap: dict) -> None:
    with torch.no_grad():
        s.vectors.copy_(snap["vectors"])
    s.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
    if snap["scaler"]:  # {} from a disabled scaler
        s.scaler.load_state_dict(snap["scaler"])
    s.optimizer.zero_grad(set_to_none=True)


def _cloned(value):
    """A copy of a state dict: tensors cloned, dicts/lists/tuples rebuilt, numbers and strings shared, anything
    else deep-copied."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: _cloned(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_cloned(item) for item in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return copy.deepcopy(value)
