"""The images of a training folder and their captions: the one image lister, the one caption reader (the wizard,
the doctor, preprocessing and the trainer all read captions here), the one tag splitter, and the edits the TUI's
caption-review screen makes. Torch-free.

- Images are the files directly in the folder whose extension is in `IMAGE_EXTENSIONS` (any case); hidden files
  (a leading dot) and folders are skipped; the order is by file name (code point order, the same on every OS).
- The caption of `photo.png` is `photo.txt` in the same folder, read as UTF-8 (a byte-order mark is dropped;
  a file that is not UTF-8 is read as Latin-1, so nothing is lost when it is rewritten), with every run of
  whitespace, line breaks included, collapsed to one space: a multi-line caption is one prompt.
- Without a caption file the trainer uses the file name, cleaned (`training_caption`, `clean_stem`).
- Tags are the comma-separated parts of a caption; tag comparisons ignore case and collapse whitespace. Every write
  goes through `core.atomic`, and only files whose tags actually change are rewritten.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from core.atomic import atomic_write_text, sync_folder
from core.errors import TiwizError
from core.tokens import TOKEN_LIMIT, count_tokens_many

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
IMAGE_KINDS = "png, jpg, jpeg, webp, bmp, gif, tif, tiff"  # IMAGE_EXTENSIONS, for messages
CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")


# --- single files -------------------------------------------------------------------------------------------------

def caption_path(image: str | os.PathLike) -> Path:
    """`<stem>.txt` beside the image."""
    return Path(image).with_suffix(".txt")


def read_caption_file(path: str | os.PathLike) -> str | None:
    """The text of a caption file with its whitespace collapsed (see the module docstring), or None when there is
    none."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    except OSError as exc:
        raise TiwizError(f"Cannot read caption file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return " ".join(text.split())


def read_caption(image: str | os.PathLike) -> str | None:
    """The caption of an image, or None when it has no caption file."""
    return read_caption_file(caption_path(image))


_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")


def clean_stem(stem: str) -> str:
    """Caption from a filename stem, like A1111: `00012-cat_on_a_mat` -> `cat on a mat`."""
    text = _LEADING_NUMBERS.sub("", stem).replace("_", " ")
    return " ".join(text.split())


def training_caption(image: str | os.PathLike) -> str:
    """The caption the trainer uses: the caption file's text, else (no file) the cleaned file name."""
    caption = read_caption(image)
    return caption if caption is not None else clean_stem(Path(image).stem)


def write_caption(image: str | os.PathLike, caption: str, *, sync_dir: bool = True) -> Path:
    """Write the caption of an image atomically (stripped, UTF-8, no trailing newline). Returns the .txt path.
    `sync_dir=False` is for batches, which sync the folder once at the end."""
    return atomic_write_text(caption_path(image), (caption or "").strip(), sync_dir=sync_dir)


def apply_existing_caption(generated: str, existing: str | None, action: str, *, tags: bool = False) -> str:
    """A1111's "existing caption txt action": combine a generated caption with the source's existing one.

    `ignore` keeps the generated caption; `copy` replaces it with the existing one; `prepend`/`append` join the two with
    a space, or, for `tags` (a tagger's caption), as tags joined by ", " with the generated tags the existing caption
    already has left out. Without an existing caption the generated one is kept. The result is stripped; an empty
    result means "write no caption file".
    """
    if action not in CAPTION_ACTIONS:
        raise TiwizError(f"Unknown caption action {action!r}; choose one of {', '.join(CAPTION_ACTIONS)}.")
    generated = (generated or "").strip()
    existing = (existing or "").strip()
    if existing and action == "copy":
        return existing
    if existing and action in ("prepend", "append"):
        if tags:
            old = split_tags(existing)
            new = [t for t in split_tags(generated) if _key(t) not in {_key(o) for o in old}]
            return join_tags(old + new if action == "prepend" else new + old)
        generated = f"{existing} {generated}" if action == "prepend" else f"{generated} {existing}"
    return generated.strip()


# --- tags ---------------------------------------------------------------------------------------------------------

def normalize_tag(tag: str) -> str:
    """A tag with its whitespace collapsed."""
    return " ".join((tag or "").split())


def _key(tag: str) -> str:
    return normalize_tag(tag).casefold()


def split_tags(caption: str | None) -> list[str]:
    """The comma-separated tags of a caption, whitespace-normalised, empty ones dropped."""
    return [t for t in (normalize_tag(part) for part in (caption or "").split(",")) if t]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def _clean_tag_argument(tag: str, what: str = "Tag") -> str:
    tag = normalize_tag(tag)
    if not tag:
        raise TiwizError(f"{what} is empty.")
    if "," in tag:
        raise TiwizError(f"{what} {tag!r} contains a comma; give one tag at a time.")
    return tag


# --- the caption set ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptionItem:
    image: Path
    caption: str  # "" when missing or empty
    tokens: int  # CLIP tokens without start/end
    has_file: bool

    @property
    def caption_file(self) -> Path:
        return caption_path(self.image)

    @property
    def is_missing(self) -> bool:
        return not self.has_file

    @property
    def is_empty(self) -> bool:
        return self.has_file and not self.caption

    @property
    def over_limit(self) -> bool:
        return self.tokens > TOKEN_LIMIT

    @property
    def tags(self) -> list[str]:
        return split_tags(self.caption)

    @property
    def training_caption(self) -> str:
        """What the trainer uses: the caption, or the cleaned file name when there is no caption file."""
        return self.caption if self.has_file else clean_stem(self.image.stem)

    def to_dict(self) -> dict:
        return {"image": str(self.image), "caption": self.caption, "tokens": self.tokens,
                "has_file": self.has_file, "over_limit": self.over_limit}


def is_image_file(path: Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Images directly in `folder` (not recursive; hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TiwizError(f"{folder} is not a folder.")
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise TiwizError(f"Cannot list {folder}: {exc.strerror or exc}") from exc
    return sorted((p for p in entries if is_image_file(p)), key=lambda p: p.name)


def filter_items(items: Iterable[CaptionItem], text: str = "", *, tag: str | None = None, missing: bool = False,
                 empty: bool = False, over_limit: bool = False) -> list[CaptionItem]:
    """Items matching every given criterion, in memory (no disk access): `text` is a case-insensitive substring of
    the caption or the image name; `tag` is one of its tags; `missing` = no caption file; `empty` = missing or blank
    caption; `over_limit` = more than 75 CLIP tokens."""
    needle = text.casefold().strip()
    tag_key = _key(tag) if tag else None
    out = []
    for item in items:
        if needle and needle not in item.caption.casefold() and needle not in item.image.name.casefold():
            continue
        if tag_key is not None and tag_key not in {_key(t) for t in item.tags}:
            continue
        if missing and item.has_file:
            continue
        if empty and item.caption:
            continue
        if over_limit and not item.over_limit:
            continue
        out.append(item)
    return out


def tag_counts(items: Iterable[CaptionItem]) -> dict[str, int]:
    """How many of the items' captions use each tag (first spelling seen), most used first, then by name."""
    counts: dict[str, int] = {}
    names: dict[str, str] = {}
    for item in items:
        for k in dict.fromkeys(_key(t) for t in item.tags):
            names.setdefault(k, next(t for t in item.tags if _key(t) == k))
            counts[k] = counts.get(k, 0) + 1
    return {names[k]: n for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def caption_is_tags(caption: str) -> bool:
    """Whether a caption reads as booru-style tags (`1girl, solo, blue hair, twintails`): at least four
    comma-separated parts of a few words each (none over six), rather than a sentence (a tagger writes ten or more;
    `a cat, red, outdoors` is a short description)."""
    parts = split_tags(caption)
    if len(parts) < 4:
        return False
    words = sorted(len(p.split()) for p in parts)
    return words[len(words) // 2] <= 3 and words[-1] <= 6 and not any(p.endswith(".") for p in parts)


def caption_language(items: Iterable[CaptionItem]) -> str:
    """"tags" when most non-empty captions are tags, "sentences" when they are not, "none" without captions."""
    return language_of(i.caption for i in items)


def language_of(captions: Iterable[str]) -> str:
    """`caption_language` of caption texts."""
    captions = [c for c in captions if c]
    if not captions:
        return "none"
    tags = sum(caption_is_tags(c) for c in captions)
    return "tags" if tags * 2 > len(captions) else "sentences"


def same_tag(a: str, b: str) -> bool:
    """Whether two tags are the same tag (case and whitespace ignored)."""
    return _key(a) == _key(b)


ProgressCallback = Callable[[int, int], None]  # (done, total)


class CaptionSet:
    """The images of one folder and their captions. Reads the disk on every call, so it never shows stale data."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise TiwizError(f"{self.folder} is not a folder.")

    # reading

    def images(self) -> list[Path]:
        return list_images(self.folder)

    def items(self) -> list[CaptionItem]:
        images = self.images()
        captions = [read_caption(p) for p in images]
        counts = count_tokens_many([c or "" for c in captions])
        return [CaptionItem(p, c or "", n, c is not None) for p, c, n in zip(images, captions, counts)]

    def item(self, image: str | os.PathLike) -> CaptionItem:
        image = self._resolve(image)
        caption = read_caption(image)
        return CaptionItem(image, caption or "", count_tokens_many([caption or ""])[0], caption is not None)

    def find(self, text: str = "", *, tag: str | None = None, missing: bool = False, empty: bool = False,
             over_limit: bool = False) -> list[CaptionItem]:
        """The items matching every criterion (see `filter_items`), read from the disk now."""
        return filter_items(self.items(), text, tag=tag, missing=missing, empty=empty, over_limit=over_limit)

    def tag_counts(self) -> dict[str, int]:
        """How many captions use each tag (first spelling seen), most used first."""
        return tag_counts(self.items())

    # writing

    def set_caption(self, image: str | os.PathLike, caption: str) -> CaptionItem:
        """Replace one image's caption (atomically). Returns the updated item."""
        image = self._resolve(image)
        write_caption(image, caption)
        return self.item(image)

    def add_tag(self, tag: str, position: str = "append", images: Iterable[str | os.PathLike] | None = None,
                progress: ProgressCallback | None = None) -> int:
        """Add `tag` to every caption (or to `images`) that lacks it, at the start (`prepend`) or end (`append`).
        An image without a caption file gets one holding its file-name caption (what the trainer used until now)
        with the tag, so removing the tag again gives the trainer the same caption as before. Returns how many files
        changed. `progress(done, total)` is called as files are checked (for every bulk edit)."""
        tag = _clean_tag_argument(tag)
        if position not in ("prepend", "append"):
            raise TiwizError(f"Unknown position {position!r}; choose prepend or append.")

        def edit(tags: list[str]) -> list[str]:
            if _key(tag) in {_key(t) for t in tags}:
                return tags
            return [tag, *tags] if position == "prepend" else [*tags, tag]

        return self._edit_tags(edit, images, create=True, progress=progress)

    def remove_tag(self, tag: str, images: Iterable[str | os.PathLike] | None = None,
                   progress: ProgressCallback | None = None) -> int:
        """Remove every occurrence of `tag`. Returns how many files changed."""
        key = _key(_clean_tag_argument(tag))
        return self._edit_tags(lambda tags: [t for t in tags if _key(t) != key], images, progress=progress)

    def replace_tag(self, old: str, new: str, images: Iterable[str | os.PathLike] | None = None,
                    progress: ProgressCallback | None = None) -> int:
        """Replace tag `old` by `new` where it occurs, in place; an empty `new` removes it, and a caption that already
        has `new` keeps a single copy. Returns how many files changed."""
        old_key = _key(_clean_tag_argument(old, "Tag to replace"))
        new = normalize_tag(new)
        if not new:
            return self.remove_tag(old, images, progress=progress)
        new = _clean_tag_argument(new, "Replacement tag")

        def edit(tags: list[str]) -> list[str]:
            if old_key not in {_key(t) for t in tags}:
                return tags
            out: list[str] = []
            seen: set[str] = set()
            for t in tags:
                t = new if _key(t) == old_key else t
                if _key(t) == _key(new):
                    if _key(new) in seen:
                        continue
                    seen.add(_key(new))
                out.append(t)
            return out

        return self._edit_tags(edit, images, progress=progress)

    # helpers

    def _resolve(self, image: str | os.PathLike) -> Path:
        path = Path(image)
        if not path.is_absolute() and not path.exists():
            path = self.folder / path
        if not is_image_file(path):
            raise TiwizError(f"{path} is not an image in {self.folder}.")
        return path

    def _edit_tags(self, edit, images, create: bool = False, progress: ProgressCallback | None = None) -> int:
        """Each changed file is written atomically with one fsync; the folders are synced once at the end."""
        targets = self.images() if images is None else [self._resolve(p) for p in images]
        changed = 0
        folders: set[Path] = set()
        try:
            for done, image in enumerate(targets, 1):
                caption = read_caption(image)
                if caption is not None or create:
                    tags = split_tags(caption if caption is not None else clean_stem(image.stem))
                    new_tags = edit(list(tags))
                    if new_tags != tags:
                        write_caption(image, join_tags(new_tags), sync_dir=False)
                        folders.add(image.parent)
                        changed += 1
                if progress is not None:
                    progress(done, len(targets))
        finally:
            for folder in folders:
                sync_folder(folder)
        return changed
