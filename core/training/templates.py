"""Prompt templates: one prompt per line, `[name]` becomes the embedding's trigger and `[filewords]` the image's caption.

Torch-free (the TUI imports it). Built-in templates live in the repo's `templates/` folder, or in
`sys.prefix/share/tiwiz/templates` for a non-editable install. Users can point at their own `.txt` file instead.
"""

from __future__ import annotations

import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from core.errors import TiwizError
from core.prep.captions import split_tags

NAME = "[name]"
FILEWORDS = "[filewords]"
DEFAULT_TEMPLATE = "style_filewords"
MAX_TEMPLATE_BYTES = 1024 * 1024


@dataclass
class Template:
    name: str  # built-in name ("style_filewords") or the user's file stem
    lines: list[str]
    path: Path | None = None

    @property
    def uses_filewords(self) -> bool:
        return any(FILEWORDS in line for line in self.lines)

    @property
    def lines_without_name(self) -> list[str]:
        """Lines that train nothing (no `[name]`); loading keeps them, the UI can warn."""
        return [line for line in self.lines if NAME not in line]

    def pick(self, rng: random.Random) -> str:
        return rng.choice(self.lines)


def templates_dir() -> Path:
    """The folder holding the built-in templates."""
    candidates = [
        Path(__file__).resolve().parents[2] / "templates",
        Path(sys.prefix) / "share" / "tiwiz" / "templates",
        Path(sys.base_prefix) / "share" / "tiwiz" / "templates",
    ]
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("*.txt")):
            return folder
    raise TiwizError("tiwiz's built-in templates are missing (looked in " + ", ".join(str(c) for c in candidates)
                     + "); reinstall tiwiz, or pass a template file path")


def list_templates() -> list[str]:
    """Names of the built-in templates, sorted ("none", "style", "style_filewords", ...)."""
    return sorted(p.stem for p in templates_dir().glob("*.txt") if p.is_file())


def load_template(name_or_path: str | os.PathLike) -> Template:
    """A built-in template by name (`style_filewords`, `style_filewords.txt`) or a user's file by path.
    Blank lines are ignored; a template with no `[name]` anywhere is refused."""
    text = str(name_or_path).strip()
    if not text:
        raise TiwizError("no template given; choose one of: " + ", ".join(list_templates()))
    given = Path(os.path.expanduser(text))
    if given.is_dir():
        raise TiwizError(f"template {given} is a folder; give a .txt file with one prompt per line")
    if given.is_file():
        return _load_file(given, given.stem)
    builtin = text[:-4] if text.lower().endswith(".txt") else text
    if "/" not in builtin and os.sep not in builtin:
        path = templates_dir() / f"{builtin}.txt"
        if path.is_file():
            return _load_file(path, builtin)
    if "/" in text or os.sep in text or text.lower().endswith(".txt"):
        raise TiwizError(f"template file not found: {given} (built-in templates: {', '.join(list_templates())})")
    raise TiwizError(f"unknown template {text!r}; built-in templates: {', '.join(list_templates())} "
                     "(or give the path of your own .txt file)")


def _load_file(path: Path, name: str) -> Template:
    size = path.stat().st_size
    if size > MAX_TEMPLATE_BYTES:
        raise TiwizError(f"template {path} is {size // 1024} KB; a template is a short text file of prompts")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise TiwizError(f"template {path} is not UTF-8 text") from None
    except OSError as exc:
        raise TiwizError(f"cannot read template {path}: {exc.strerror or exc}") from None
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if not lines:
        raise TiwizError(f"template {path} is empty; write one prompt per line, each with [name] where the "
                         "embedding goes, e.g. 'a photo of [name], [filewords]'")
    if not any(NAME in line for line in lines):
        raise TiwizError(f"template {path} has no [name] on any line, so training would learn nothing; put [name] "
                         "where the embedding goes, e.g. 'a painting of [filewords], art by [name]'")
    return Template(name=name, lines=lines, path=path)


def render(line: str, name: str, filewords: str, *, shuffle_tags: bool = False, tag_dropout: float = 0.0,
           keep_tags: int = 0, rng: random.Random) -> str:
    """Substitute `[name]` and `[filewords]` in one template line. The caption is split on commas; the first
    `keep_tags` tags stay first and in order (kohya's keep_tokens); each other tag is dropped with probability
    `tag_dropout`, then the rest are shuffled if `shuffle_tags` (A1111's order), using `rng` only. A `[name]` inside
    the caption is substituted too (A1111 does the same). Separators left dangling by an empty caption are tidied."""
    if not 0.0 <= float(tag_dropout) <= 1.0:
        raise TiwizError(f"tag dropout must be between 0 and 1, not {tag_dropout}")
    words = ""
    if FILEWORDS in line:
        tags = split_tags(filewords)
        kept, tags = tags[:max(0, keep_tags)], tags[max(0, keep_tags):]
        if tag_dropout > 0:
            tags = [tag for tag in tags if rng.random() >= tag_dropout]
        if shuffle_tags:
            rng.shuffle(tags)
        words = ", ".join(kept + tags)
    # [filewords] first, then [name], as A1111 does: a caption may itself say where the trigger goes
    text = line.replace(FILEWORDS, words).replace(NAME, name)
    return _tidy(text) if not words and FILEWORDS in line else text


# The template a kind trains with when the captions are booru tags and no template was named: tag models (Illustrious,
# NoobAI, Pony) are prompted with tags, so the training prompts are tags too. A negative embedding learns a look, as a
# style does.
TAG_TEMPLATES = {"subject": "subject_tags", "style": "style_tags", "negative": "style_tags"}


def proposed_template(template: str, kind: str, language: str) -> tuple[str, str]:
    """(the template to train with, why) for the configured `template`, the embedding's `kind` and the captions'
    `language` (core.prep.captions.caption_language). The default template (A1111's style_filewords) gives way to
    the kind's tag template when the captions are tags; a template the user named is kept as is."""
    if template != DEFAULT_TEMPLATE or language != "tags":
        return template, ""
    chosen = TAG_TEMPLATES.get(kind, "subject_tags")
    return chosen, (f"The captions are booru tags (comma-separated, no sentences), so the {kind} embedding trains "
                    f"on tag prompts ({chosen}: {'[name], [filewords]' if kind == 'subject' else '[filewords], [name]'}"
                    ") instead of A1111's sentence template: tag-trained models such as Illustrious, NoobAI and "
                    "Pony are prompted with tags.")


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    text = re.sub(r"\s+,", ",", text)
    return text.strip(" ,")
