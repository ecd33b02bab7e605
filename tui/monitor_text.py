"""The monitor's texts: the quality line, the details panel, the empty plot's line, the checkpoint rows' marks.
Plain Python over a RunView (no Textual)."""

from __future__ import annotations

from core.embeddings.inspect import NORM_WARN_FACTOR
from core.runs.run_events import RunPhase
from tui.run_view import TERMINAL_STATES, RunView


def norm_too_big(norms, vocab_median: float | None) -> bool:
    """True when a vector's norm is far beyond the vocabulary's (it swamps the rest of the prompt)."""
    if not norms or not vocab_median:
        return False
    return any(isinstance(n, (int, float)) and n > NORM_WARN_FACTOR * vocab_median for n in norms)


MARKS = (("▣", "preview"), ("★", "best"), ("!", "norm too big"))


def checkpoint_label(step: int, preview: bool, best: bool = False, big: bool = False) -> str:
    return f"step {step:>6}{'  ▣' if preview else ''}{' ★' if best else ''}{' !' if big else ''}"


def marks_legend(rows: tuple) -> str:
    """What the marks shown in the checkpoint rows mean (only those shown), e.g. "▣ preview  ★ best"."""
    shown = [any(row[i + 1] for row in rows) for i in range(len(MARKS))]
    return "  ".join(f"{mark} {meaning}" for (mark, meaning), on in zip(MARKS, shown) if on)


def empty_plot_text(view: RunView) -> str:
    """What the loss plot says before it has a point: a failed run says so instead of waiting for a step."""
    if view.state == RunPhase.FAILED:
        return "the run failed before its first step (the error is below)"
    if view.state == RunPhase.KILLED:
        return "the worker died before its first step"
    if view.state in TERMINAL_STATES:
        return f"no steps: the run {view.state}"
    return "waiting for the first step…"


def auto_stop_short(view: RunView) -> str:
    """The auto-stop rule's state in a few words (the details panel has `AutoStopState.label()`'s full sentence)."""
    if view.auto_stop is False:
        return "auto-stop: off"
    rule = view.auto_stop_state
    if rule is None:
        return ""
    if rule.fired_at is not None:
        return f"auto-stop: flat since step {rule.fired_at}"
    if rule.ratio is None:
        return f"auto-stop: watching {rule.watched} of {rule.window} steps"
    return f"auto-stop: ratio {rule.ratio:.2f} (flat below {rule.threshold:g})"


def quality_line(view: RunView, full: bool = False) -> str:
    """The suggested best step, the held-out loss, the editability signal and the auto-stop rule: two lines at most
    at 80 columns, the most useful first. `full`: the rule's whole sentence (the details panel)."""
    parts = []
    if view.best_step is not None:
        parts.append(view.best_label)  # 'best step 240 (lowest held-out loss)'
    if view.holdout_losses:
        parts.append(f"held-out {view.holdout_losses[-1][1]:.4f}")
    if view.editability:  # 1 = the prompt's other words read as next to the init text (core.training.editability)
        parts.append(f"editability {view.editability[-1][1]:.2f}")
    rule = auto_stop_short(view)
    if full and view.auto_stop is False and view.auto_stop_label:
        rule += f" (its rule, watched only: {view.auto_stop_label})"
    elif full and view.auto_stop_label:
        rule = f"auto-stop: {view.auto_stop_label}"
    if rule:
        parts.append(rule)
    return escape_markup(" · ".join(parts))


def details_text(view: RunView, step: int | None) -> str:
    """The details panel: the chosen (else latest) checkpoint's vector norms against the vocabulary's median, each
    vector's nearest tokens, and the quality figures."""
    lines = []
    quality = quality_line(view, full=True)
    if quality:
        lines.append(quality)
    row = next((c for c in view.checkpoints if c.step == step), None) if step is not None else None
    row = row or (view.checkpoints[-1] if view.checkpoints else None)
    if row is None:
        lines.append("[dim]no checkpoint yet: norms and nearest tokens appear with the first[/]")
        return "\n".join(lines)
    best = "  [b]★ suggested best step[/]" if row.best or row.step == view.best_step else ""
    lines.append(f"[b]checkpoint step {row.step}[/]{best}")
    median = view.vocab_median_norm
    if median:
        lines.append(f"norm × vocab median {median:.3g} (warns >{NORM_WARN_FACTOR:g}×), nearest")
    norms = row.norms or []
    nearest = row.nearest or []
    if not norms and not nearest:
        lines.append("[dim]this checkpoint carries no norms (an older run)[/]")
    for i in range(max(len(norms), len(nearest))):
        lines.append(vector_line(i, norms[i] if i < len(norms) else None,
                                 nearest[i] if i < len(nearest) and isinstance(nearest[i], list) else [], median))
    return "\n".join(lines)


def vector_line(i: int, norm, tokens: list, median: float | None) -> str:
    """One vector in one short line (46 columns with 2 tokens): "v1 1.70 (4.4×) ⚠ photograph 0.91, portrait 0.88"."""
    text = f"v{i}"
    if isinstance(norm, (int, float)):
        text += f" {norm:.3g}"
        if median:
            ratio = norm / median
            text += f" ({ratio:.1f}×)"
            if ratio > NORM_WARN_FACTOR:
                text = f"[red]{text} ⚠[/]"
    words = [f"{escape_markup(str(t[0]).removesuffix('</w>'))} {t[1]:.2f}" for t in tokens[:2]
             if isinstance(t, (list, tuple)) and len(t) >= 2 and isinstance(t[1], (int, float))]
    return text + (" " + ", ".join(words) if words else "")


def escape_markup(text: str) -> str:
    from rich.markup import escape

    from core.safe_text import safe_text

    return escape(safe_text(text))  # run events quote file names: no markup, no terminal escapes
