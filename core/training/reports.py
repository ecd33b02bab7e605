"""What a run shows of its vectors: the report each checkpoint carries (norms, nearest vocabulary tokens, norm
warnings) and the preview images (previews/NAME-STEP.png, and previews/sheet.png of them all at the end).

Both show the vectors a checkpoint saves (the average, with ema_decay), and neither can end a training: a failed
preview or report is a warning or an empty report.
"""

from __future__ import annotations

import torch

from core.atomic import atomic_write_with
from core.embeddings.inspect import vector_report, vocabulary_from_encoder
from core.errors import TiwizError
from core.runs import run_events as ev
from core.training.contact_sheet import write_contact_sheet

EMPTY_REPORT = {"norms": None, "nearest": None, "vocab_median_norm": None, "norm_warnings": []}


class VectorReports:
    """The report of each checkpoint's vectors; the vocabulary is read once, and each norm warning said once."""

    def __init__(self) -> None:
        self.vocab = None
        self.warned: set[str] = set()

    def report(self, s) -> dict:
        """Norms and nearest vocabulary tokens of the saved vectors (core.embeddings.inspect); never fails a save.
        SDXL: of the CLIP-L columns."""
        try:
            if self.vocab is None:
                self.vocab = vocabulary_from_encoder(s.model.text_encoder, s.model.tokenizer)
            return vector_report(s.saved_vectors()[:, s.slots[0].columns], self.vocab)
        except Exception:  # noqa: BLE001 - an inspector problem must never cost a checkpoint
            return dict(EMPTY_REPORT)

    def new_warnings(self, report: dict) -> list[str]:
        """The report's norm warnings not said before (once per vector: "vector N has ...")."""
        out = []
        for message in report["norm_warnings"]:
            if message[:12] not in self.warned:
                self.warned.add(message[:12])
                out.append(message)
        return out


def preview(s) -> str | None:
    """Render a preview of session `s` at s.step (previews/NAME-STEP.png, a `preview` event); a failure (e.g. out of
    memory) is a warning, never the end of the training."""
    s.sink.emit(ev.PreviewRendering(step=s.step))  # viewers say "rendering preview…" meanwhile
    try:
        with s.averaged():
            return _render_preview(s)
    except TiwizError:
        raise
    except Exception as exc:
        s.sink.emit(ev.Warning(step=s.step,
                               message=f"preview at step {s.step} failed: {exc.__class__.__name__}: {exc}"))
        return None


def _render_preview(s) -> str:
    from core.training.kinds import PreviewPrompt, render_preview

    cfg = s.config
    if cfg.kind == "subject":
        prompt = (cfg.preview_prompt or s.validation_set[0][3]).replace("[name]", s.placeholder)
        if cfg.preview_prompt and "[name]" not in cfg.preview_prompt:
            prompt = f"{prompt}, {s.placeholder}"
        prompts = [PreviewPrompt(prompt, cfg.preview_negative, "")]
    else:
        prompts = _kind_prompts(s)
    pipe = s.model.make_pipeline(cfg.preview_sampler)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, negative: str | None):
        generator = torch.Generator().manual_seed(cfg.preview_seed)  # the same seed for both images of a pair
        with s.precision.autocast():
            return pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=cfg.preview_steps,
                        guidance_scale=cfg.preview_cfg, generator=generator,
                        width=cfg.preview_width or cfg.width, height=cfg.preview_height or cfg.height).images[0]

    image = render_preview(generate, prompts)
    rel = f"previews/{s.name}-{s.step}.png"
    atomic_write_with(s.out_dir / rel, lambda tmp: image.save(tmp, format="PNG"))
    s.sink.emit(ev.Preview(step=s.step, path=rel))
    return rel


def _kind_prompts(s) -> list:
    """A style's preview (the style prompts) or a negative embedding's pair (core.training.kinds)."""
    from core.prep.captions import caption_is_tags
    from core.training.kinds import preview_line, preview_prompts

    cfg = s.config
    caption = s.dataset.items[s.feed.indices[0]].caption if s.feed.indices else ""
    first = s.validation_set[0][3].replace(s.placeholder, "[name]")
    line = preview_line(cfg.kind, cfg.preview_prompt, first, caption, caption_is_tags(caption))
    return preview_prompts(cfg.kind, line, s.placeholder, cfg.preview_negative, s.name)


def final_previews(s) -> None:
    """A preview of the last step (unless the schedule just made one), then previews/sheet.png of them all."""
    if not s.config.preview_every:
        return
    if s.step % s.config.preview_every:
        preview(s)
    try:
        write_contact_sheet(s.out_dir / "previews", s.name)
    except Exception as exc:  # a sheet is a convenience: never the end of a finished training
        s.sink.emit(ev.Warning(step=s.step, message=f"could not write previews/sheet.png: {exc}"))
