"""Norm control of the trained vectors (`norm_mode`): free, clamp or preserve.

Standard textual inversion lets a vector's length grow without limit, and DTI (Direction-aware Textual Inversion,
arXiv 2512.13672) measures where that goes: learned CLIP-L vectors reach norms above 20 where real tokens sit near
0.4, and that inflation is what makes an embedding swamp the rest of a prompt (it stops being editable). So:

- `free`: no constraint (A1111, diffusers, kohya).
- `clamp`: each vector is capped at `norm_clamp_k` times the mean norm of its text encoder's vocabulary; a shorter
  vector trains freely. Applied after every optimizer step, like a projection onto a ball.
- `preserve`: only the direction trains (DTI's recipe). The gradient's radial part is removed before the step
  (the optimizer's moments then hold no radial history) and each vector is put back at its initial norm after it
  (the retraction of Riemannian gradient descent on the sphere). A vector that starts at zero (an empty init text)
  has no direction yet: it is kept at the vocabulary's mean norm once it has one. OneTrainer's "Preserve Embedding
  Norm" renormalises to the vocabulary's median norm instead; DTI keeps the init token's.

Every rule holds per text encoder: SDXL's parameter holds CLIP-L's and bigG's columns side by side, and each set is
measured against its own vocabulary and kept at its own initial norm. The targets travel in the resume state, so a
resumed run keeps the same norms. The moving average of the vectors (`ema_decay`) is projected the same way after
each update: an average of vectors on a sphere lies inside it (the ball of `clamp` is convex, so there it stays).
"""

from __future__ import annotations

NORM_MODES = ("free", "clamp", "preserve")
TINY = 1e-12  # a row shorter than this has no direction


def vocabulary_mean_norm(encoder) -> float:
    """The mean L2 norm of a text encoder's token embeddings (its whole vocabulary)."""
    weight = encoder.get_input_embeddings().weight.detach()
    return float(weight.float().norm(dim=1).mean())


class NormControl:
    """The rule of one run. `columns[j]` is text encoder j's slice of the vector parameter, `vocab_means[j]` its
    vocabulary's mean norm; `targets` ([n vectors, n encoders]) the norms `preserve` keeps."""

    def __init__(self, mode: str, columns: list, vocab_means: list[float], k: float, targets=None) -> None:
        if mode not in NORM_MODES:
            raise ValueError(f"norm mode must be one of {', '.join(NORM_MODES)} (got {mode!r})")
        self.mode, self.columns, self.vocab_means, self.k = mode, list(columns), list(vocab_means), float(k)
        self.targets = targets

    @classmethod
    def for_slots(cls, mode: str, k: float, slots, vectors) -> "NormControl":
        """The rule for a trainer's encoder slots (core.training.conditioning.EncoderSlot), with `preserve`'s targets
        taken from `vectors` (the initial ones)."""
        control = cls(mode, [s.columns for s in slots], [vocabulary_mean_norm(s.encoder) for s in slots], k)
        control.targets = control._targets_from(vectors)
        return control

    # ---- the measures -------------------------------------------------------------------------------------------
    def norms(self, vectors):
        """[n vectors, n encoders]: each vector's norm in each encoder's columns."""
        import torch

        v = vectors.detach().float()
        return torch.stack([v[:, c].norm(dim=1) for c in self.columns], dim=1)

    def caps(self) -> list[float]:
        """`clamp`'s largest norm per encoder."""
        return [self.k * mean for mean in self.vocab_means]

    def _targets_from(self, vectors):
        import torch

        norms = self.norms(vectors).cpu()
        means = torch.tensor(self.vocab_means, dtype=norms.dtype).expand_as(norms)
        return torch.where(norms > TINY, norms, means)  # a zero vector: the vocabulary's mean, once it has a direction

    def violation(self, vectors, rtol: float = 1e-4) -> str | None:
        """What breaks this mode's promise in `vectors` (for checks and tests), or None."""
        norms = self.norms(vectors).cpu()
        if self.mode == "clamp":
            for j, cap in enumerate(self.caps()):
                top = float(norms[:, j].max())
                if top > cap * (1 + rtol):
                    return f"encoder {j}: norm {top:.6g} over the cap {cap:.6g}"
        elif self.mode == "preserve":
            moved = norms > TINY
            off = ((norms - self.targets).abs() / self.targets)[moved]
            if off.numel() and float(off.max()) > rtol:
                return f"a norm is {float(off.max()):.3g} (relative) away from its target"
        return None

    # ---- the rule -----------------------------------------------------------------------------------------------
    def project_gradient(self, parameter) -> None:
        """`preserve`: remove the radial part of `parameter.grad` (per vector and encoder), so only the direction
        trains. Call after unscaling and before clipping."""
        grad = parameter.grad
        if self.mode != "preserve" or grad is None:
            return
        import torch

        with torch.no_grad():
            v = parameter.detach()
            for c in self.columns:
                vc, gc = v[:, c].float(), grad[:, c].float()
                sq = (vc * vc).sum(dim=1, keepdim=True)
                radial = (vc * gc).sum(dim=1, keepdim=True) / sq.clamp_min(TINY)
                grad[:, c] = (gc - torch.where(sq > TINY, radial, torch.zeros_like(radial)) * vc).to(grad.dtype)

    def apply(self, tensor) -> None:
        """Put `tensor` ([n, width], the vectors or their moving average) back inside the rule, in place."""
        if self.mode == "free":
            return
        import torch

        with torch.no_grad():
            for j, c in enumerate(self.columns):
                part = tensor[:, c].float()
                norms = part.norm(dim=1, keepdim=True)
                if self.mode == "clamp":
                    scale = (self.caps()[j] / norms.clamp_min(TINY)).clamp(max=1.0)
                else:
                    target = self.targets[:, j:j + 1].to(part.device)
                    scale = torch.where(norms > TINY, target / norms.clamp_min(TINY), torch.ones_like(norms))
                tensor[:, c] = (part * scale).to(tensor.dtype)

    # ---- resume --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"mode": self.mode, "k": self.k, "targets": self.targets.detach().float().cpu().clone()}

    def load_state_dict(self, state: dict | None, vectors) -> None:
        """`preserve`'s targets from a resume state; a state without them (an older run, or one trained in another
        mode) keeps the norms the vectors have now."""
        same_mode = isinstance(state, dict) and state.get("mode") == self.mode
        targets = state.get("targets") if same_mode else None
        if targets is not None and tuple(targets.shape) == (vectors.shape[0], len(self.columns)):
            self.targets = targets.float().cpu().clone()
        else:
            self.targets = self._targets_from(vectors)

    def describe(self, names: list[str] | None = None) -> str:
        """The rule in words, e.g. 'clamp: each vector at most 2x the vocabulary's mean norm (0.39)'."""
        names = names or [""] * len(self.columns)

        def per_encoder(values) -> str:
            parts = [f"{name + ' ' if name else ''}{value:.3g}" for name, value in zip(names, values)]
            return ", ".join(parts)

        if self.mode == "clamp":
            return (f"clamp: each vector at most {self.k:g}x its vocabulary's mean norm "
                    f"({per_encoder(self.caps())})")
        if self.mode == "preserve":
            firsts = [float(self.targets[:, j].mean()) for j in range(len(self.columns))]
            return f"preserve: only the direction trains; norms kept at their initial values (mean {per_encoder(firsts)})"
        return "free: the norms are not constrained"
