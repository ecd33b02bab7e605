"""What the Training settings screen says beside the form: the template names, sample prompts rendered from the
real captions, the summary ctrl+n confirms (with a time estimate from the last measured run) and what Load TOML did.
Each reads files: call them from workers."""

from __future__ import annotations

import random
from pathlib import Path

from core.training.config import TrainConfig

SET_EARLIER = ("model", "data", "name", "init_text", "vectors", "overwrite")  # the fields earlier screens set


def template_names() -> list[str]:
    try:
        from core.training.templates import list_templates

        return list(list_templates())
    except Exception:
        return []


def sample_prompts(template: str, name: str, dataset: str, *, n: int = 3, shuffle_tags=False,
                   tag_dropout=0.0) -> list[str]:
    """A few prompts the trainer would see: template lines rendered with the captions the trainer reads (the file
    name, cleaned, for an image without a caption file)."""
    from core.prep.captions import list_images, training_caption
    from core.training.templates import load_template, render

    tmpl = load_template(template)
    try:
        captions = [training_caption(p) for p in list_images(dataset)[:n]] or [""]
    except Exception:
        captions = [""]
    rng = random.Random(0)
    out = []
    for i in range(n):
        line = tmpl.lines[i % len(tmpl.lines)]
        out.append(render(line, name or "NAME", captions[i % len(captions)], shuffle_tags=shuffle_tags,
                          tag_dropout=tag_dropout, rng=rng))
    return out


def recent_rate(runs_root) -> tuple[float, int] | None:
    """(seconds per image, pixels per image) of the newest run under `runs_root` that logged a speed, read from the
    tail of its events.jsonl and its config.toml; None when there is none."""
    import json

    from core.training.config import load_toml

    try:
        runs = sorted(Path(runs_root).glob("*/events.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    for events in runs[:5]:
        try:
            with open(events, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - 65536))
                lines = fh.read().decode("utf-8", "replace").splitlines()
            settings = load_toml(events.parent / "config.toml")  # a UTF-8 BOM (Notepad) is fine
        except (OSError, ValueError):
            continue
        for line in reversed(lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            rate = event.get("it_s") if isinstance(event, dict) else None
            if rate:
                per_step = max(1, int(settings.get("batch_size") or 1) * int(settings.get("grad_accum") or 1))
                pixels = int(settings.get("width") or 512) * int(settings.get("height") or 512)
                return 1.0 / (float(rate) * per_step), pixels
    return None


def start_summary(config: TrainConfig, runs_root) -> str:
    """What ctrl+n is about to start: steps, image size and batch, and a time estimate from the last measured run."""
    per_step = config.batch_size * config.grad_accum
    lines = [f"{config.steps} steps × {per_step} image{'s' if per_step != 1 else ''} at {config.width}×{config.height}"
             f" on device {config.device}, into a new run folder under {Path(runs_root).absolute()}."]
    measured = recent_rate(runs_root)
    if measured:
        from core.timefmt import format_duration

        seconds_per_image, pixels = measured
        seconds = config.steps * per_step * seconds_per_image * (config.width * config.height) / pixels
        lines.append(f"Estimated time: about {format_duration(seconds)} (from the last run's speed on this machine).")
    else:
        lines.append("Estimated time: shown once the first steps are measured.")
    return "\n".join(lines)


def loaded_message(path: str, loaded: dict, current: dict) -> str:
    """What Load TOML did: it takes the training options only; the model, dataset and embedding chosen on earlier
    screens stay, and the message names those the file would have changed."""
    kept = [key for key in SET_EARLIER if key != "overwrite" and loaded.get(key) not in ("", None)
            and loaded.get(key) != current.get(key)]
    text = f"Loaded the training options from {path}."
    if kept:
        text += (" Kept this wizard's " + ", ".join("dataset" if k == "data" else k.replace("_", " ") for k in kept)
                 + " (the file's differ; change them on their screens).")
    return text


def form_warnings(config: TrainConfig, name: str) -> list[str]:
    """What a valid config will do that the user may not expect, said before the run starts: an auto-stop that can
    never fire, a preview prompt that leaves the embedding out. Each starts with "⚠"."""
    from core.training.autostop import unreachable_reason

    out = []
    why = unreachable_reason(config.effective_validate_every(), config.auto_stop_window, config.steps) \
        if config.auto_stop else None
    if why:
        out.append(f"⚠ Auto-stop cannot fire in this run: {why}. It would train all {config.steps} steps.")
    prompt = config.preview_prompt.strip()
    if prompt and "[name]" not in prompt and not (name and name in prompt):
        out.append(f"⚠ The preview prompt has neither [name] nor “{name or 'the trigger word'}”: the previews would "
                   "not show the embedding.")
    return out
