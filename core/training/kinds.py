"""Embedding kinds: what the embedding is for, which decides its default templates, how its previews are made and
how the finish screen tells the user to use it. Torch-free (the wizard imports it).

- `subject`: a thing or a character, used in the prompt. Previews: the preview prompt with the embedding.
- `style`: a look, used in the prompt. Previews use the style prompts (the first line of the style template).
- `negative`: an unwanted look (the images show it), used in the *negative* prompt, like `lazyneg` on Illustrious,
  NoobAI and Pony. Previews are pairs from the same seed: the prompt without the embedding, and the same prompt
  with the embedding in the negative prompt, side by side in one image (so the contact sheet shows the pairs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("subject", "style", "negative")
PAIR_GAP = 8
LABEL_H = 18


@dataclass(frozen=True)
class PreviewPrompt:
    prompt: str
    negative: str  # "" for none
    label: str  # what the image shows, for the pair's caption ("" for a single preview)


def preview_line(kind: str, preview_prompt: str, first_prompt: str, caption: str, tags: bool) -> str:
    """The preview prompt with `[name]` where the embedding goes (`[name]`-free for a negative embedding): the
    configured one, else the first training prompt (`first_prompt`); a style previews with the style template's
    first line and the first caption; a negative with the first caption alone."""
    if preview_prompt:
        return preview_prompt
    if kind == "style":
        import random

        from core.training.templates import load_template, render

        line = load_template("style_tags" if tags else "style_filewords").lines[0]
        return render(line, "[name]", caption, rng=random.Random(0))
    if kind == "negative":
        return caption or first_prompt
    return first_prompt


def without_name(prompt: str) -> str:
    """`prompt` with `[name]` and the separators it leaves taken out."""
    text = prompt.replace("[name]", " ")
    text = re.sub(r"\s*,(\s*,)+", ",", re.sub(r"\s+", " ", text))
    return re.sub(r"\s+,", ",", text).strip(" ,")


def preview_prompts(kind: str, line: str, placeholder: str, negative: str, name: str) -> list[PreviewPrompt]:
    """The prompts one preview renders, from its line (with `[name]`): one image, or for a negative embedding the
    pair (without it; with it in the negative prompt), to be rendered from the same seed."""
    if kind != "negative":
        prompt = line.replace("[name]", placeholder) if "[name]" in line else f"{line}, {placeholder}"
        return [PreviewPrompt(prompt, negative, "")]
    plain = without_name(line)
    with_it = f"{negative}, {placeholder}" if negative.strip() else placeholder
    return [PreviewPrompt(plain, negative, "without"), PreviewPrompt(plain, with_it, f"{name} in the negative")]


def compose(images: list, prompts: list[PreviewPrompt]):
    """One preview image: the image itself, or the pair side by side, each labelled under it."""
    from PIL import Image, ImageDraw

    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    sheet = Image.new("RGB", (len(images) * w + (len(images) - 1) * PAIR_GAP, h + LABEL_H), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (image, p) in enumerate(zip(images, prompts)):
        x = i * (w + PAIR_GAP)
        sheet.paste(image.convert("RGB"), (x, 0))
        draw.text((x + 4, h + 3), p.label, fill=(230, 230, 230))
    return sheet


def render_preview(generate, prompts: list[PreviewPrompt]):
    """Render each prompt with `generate(prompt, negative)` (which seeds its own generator the same way every call,
    so a pair differs only by its prompts) and compose them."""
    images = [generate(p.prompt, p.negative or None) for p in prompts]
    return compose(images, prompts)


def training_template(template: str, kind: str, captions) -> tuple[str, str]:
    """(the template a run trains with, why it is not the configured one, or "") from the run's captions: tag
    captions with the default template get the kind's tag template (core.training.templates.proposed_template)."""
    from core.prep.captions import language_of
    from core.training.templates import proposed_template

    return proposed_template(template, kind, language_of(captions))


def usage_text(kind: str, name: str) -> str:
    """How to use the embedding, for the finish screen and the CLI."""
    if kind == "negative":
        return (f"Use {name} in the NEGATIVE prompt: A1111/Forge: put {name} in the Negative prompt box "
                f"(e.g. \"{name}, lowres\"). ComfyUI: write embedding:{name} in the text of the CLIPTextEncode "
                f"node wired to the sampler's negative input, with a space before it (\"lowres, "
                f"embedding:{name}\"). Its previews show each prompt without it and with it in the negative prompt.")
    if kind == "style":
        return (f"Add {name} to a prompt to get its style: A1111/Forge \"a castle, {name}\"; ComfyUI "
                f"\"a castle, embedding:{name}\" in the positive CLIPTextEncode.")
    return (f"Use {name} in a prompt for the subject: A1111/Forge \"{name} on a beach\"; ComfyUI "
            f"\"embedding:{name} on a beach\" in the positive CLIPTextEncode.")


KIND_CHOICES = (("Subject: a thing or a character", "subject"), ("Style: a look", "style"),
                ("Negative: a look to keep out (negative prompt)", "negative"))
KIND_HELP = {
    "subject": "Used in the prompt for a thing or a character; previews show the preview prompt with it.",
    "style": "Used in the prompt for a look; previews use the style prompts.",
    "negative": "Trained on images of the unwanted look, used in the negative prompt (like lazyneg); previews are "
                "pairs from one seed: without it, and with it in the negative prompt.",
}


def run_kind(run_dir, fallback: str = "subject") -> str:
    """The kind a run was trained as (its config.toml), else `fallback`."""
    import tomllib
    from pathlib import Path

    try:
        with open(Path(run_dir) / "config.toml", "rb") as fh:
            kind = tomllib.load(fh).get("kind")
    except (OSError, ValueError):
        kind = None
    return kind if kind in KINDS else fallback
