"""An exponential moving average of the trained vectors (Polyak averaging), for `ema_decay` > 0.

A moving average of the iterates is the textbook remedy for an optimizer that keeps stepping around a minimum
(Polyak and Juditsky 1992); here it is opt-in. On the shipped world model's concept at the demo's recipe, 5 seeds
(bench/RESULTS.md, "Time to a good embedding"), 0.95 ended 0-0.02 closer in colour distance than the raw vectors and
got good no sooner: there the raw vectors move smoothly and the quality jumps come from the model, not from them.
The average is what the run saves (checkpoints and the final files), renders in previews and validates, so the
auto-stop rule watches the vectors it will write. The optimizer keeps stepping the raw vectors.

The decay warms up as min(ema_decay, (1 + n) / (10 + n)) after n updates (the warm-up of diffusers' EMAModel), so
the early average is not held back by the initial vectors. The [n, dim] copy costs nothing next to a step.
"""

from __future__ import annotations

import contextlib


class VectorEMA:
    def __init__(self, vectors, decay: float) -> None:
        self.decay = float(decay)
        self.average = vectors.detach().clone()
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, vectors) -> None:
        """Fold in the vectors after a good optimizer step."""
        import torch

        d = self.current_decay()
        with torch.no_grad():
            self.average.mul_(d).add_(vectors.detach(), alpha=1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, parameter):
        """The average in `parameter` for the duration (validation, previews), the raw vectors back afterwards."""
        import torch

        raw = parameter.detach().clone()
        with torch.no_grad():
            parameter.copy_(self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                parameter.copy_(raw)

    # resume: travels in state/latest.pt
    def state_dict(self) -> dict:
        return {"average": self.average.detach().float().cpu().clone(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        self.average = state["average"].to(self.average.device, self.average.dtype).clone()
        self.updates = int(state["updates"])
