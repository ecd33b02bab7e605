"""The doctor's caption and tag findings: computed from the captions alone (no image is opened), so the wizard
recomputes them from its caption index after every edit and never shows a finding an edit has fixed.

Tag findings apply when the captions are tags (`caption_language`): the trigger word equal to a tag the captions
already use, a tag on nearly every image, and images with far fewer tags than the others.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable

from core.prep.captions import CaptionItem, caption_language, same_tag, tag_counts
from core.tokens import TOKEN_LIMIT

CAPTION_CODES = ("missing-caption", "empty-caption", "long-caption")
TAG_CODES = ("trigger-is-tag", "tag-everywhere", "few-tags")
EVERYWHERE_SHARE = 0.9  # a tag on at least this share of the captioned images is "on nearly every image"
EVERYWHERE_MIN_IMAGES = 4
FEW_TAGS = 3  # this many tags or fewer (or a quarter of the median) is "very few"


@dataclass
class Finding:
    code: str
    severity: str  # "error" | "warning" | "info"
    files: list[str] = field(default_factory=list)  # names relative to the folder
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def caption_findings(items: Iterable[CaptionItem]) -> list[Finding]:
    out = []
    for item in items:
        name = item.image.name
        if item.is_missing:
            out.append(Finding("missing-caption", "warning", [name],
                               f"{name} has no caption file {item.caption_file.name}; the file name would be used."))
        elif item.is_empty:
            out.append(Finding("empty-caption", "warning", [name], f"{item.caption_file.name} is empty."))
        elif item.over_limit:
            out.append(Finding("long-caption", "warning", [name],
                               f"{item.caption_file.name} has {item.tokens} CLIP tokens; only {TOKEN_LIMIT} fit in "
                               f"one prompt chunk (with the template and embedding, fewer), the rest is cut."))
    return out


def _loose(tag: str) -> str:
    """A tag compared loosely: case, whitespace and underscores ignored (`Blue_Hair` is `blue hair`)."""
    return " ".join(tag.replace("_", " ").split()).casefold()


def tag_findings(items: Iterable[CaptionItem], trigger: str = "") -> list[Finding]:
    """Findings about the tags of tag captions (none for sentence captions)."""
    items = [i for i in items if i.has_file and i.caption]
    if caption_language(items) != "tags":
        return []
    counts = tag_counts(items)
    out = []
    trigger = (trigger or "").strip()
    if trigger:
        for tag, n in counts.items():
            if _loose(tag) == _loose(trigger):
                out.append(Finding("trigger-is-tag", "warning", [i.image.name for i in items
                                                                  if any(same_tag(t, tag) for t in i.tags)],
                                   f"The trigger word “{trigger}” is already a tag in {n} caption"
                                   f"{'s' if n != 1 else ''}: the embedding and that tag would be one word. "
                                   "Choose another trigger word, or remove the tag."))
    if len(items) >= EVERYWHERE_MIN_IMAGES:
        for tag, n in counts.items():
            if n >= EVERYWHERE_SHARE * len(items) and not (trigger and _loose(tag) == _loose(trigger)):
                out.append(Finding("tag-everywhere", "warning", [],
                                   f"“{tag}” is on {n} of {len(items)} images. Kept in the captions, the embedding "
                                   f"will not learn it (the tag explains it); removed, the embedding absorbs it. "
                                   f"Remove it if it is part of what the embedding should learn, keep it if it "
                                   f"should stay changeable in prompts."))
    sizes = [len(i.tags) for i in items]
    median = statistics.median(sizes)
    few = max(FEW_TAGS, median / 4)
    for item, n in zip(items, sizes):
        if n <= few and median >= 2 * FEW_TAGS:
            out.append(Finding("few-tags", "warning", [item.image.name],
                               f"{item.image.name} has {n} tag{'s' if n != 1 else ''} (the median is {median:g}): "
                               "what is not tagged is learned into the embedding; tag it like the others."))
    return out
