"""Every `tiwiz preprocess` option in one torch-free dataclass. The TUI builds its form from `option_fields()`.

Each field carries `metadata` with `help` (one line), and where it applies `choices`, `min`, `max` and `cli` (the flag):
the convention of `core.fields`, shared with `TrainConfig`. Bad values raise `FieldError(field, message)`.
Defaults follow A1111's Preprocess tab (512×512, split 0.5/0.2, focal weights 0.9/0.15/0.5).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from core.errors import FieldError, TiwizError
from core.prep.captions import CAPTION_ACTIONS
from core.prep.hub import DEFAULT_BLIP, DEFAULT_TAGGER
from core.fields import FieldSpec, field_specs



def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class PreprocessOptions:
    width: int = _opt(512, "Output width in pixels (multiple of 8).", min=64, max=4096, cli="--width")
    height: int = _opt(512, "Output height in pixels (multiple of 8).", min=64, max=4096, cli="--height")
    split: bool = _opt(False, "Split images much longer than the target into overlapping crops (A1111 math).",
                       cli="--split")
    split_threshold: float = _opt(0.5, "Split only when the image's aspect ratio relative to the target is <= this.",
                                  min=0.0, max=1.0, cli="--split-threshold")
    split_overlap: float = _opt(0.2, "Fraction of each split crop that overlaps its neighbour.", min=0.0, max=0.9,
                                cli="--split-overlap")
    focal_crop: bool = _opt(False, "Crop around the subject (faces, detail, corners) instead of the centre.",
                            cli="--focal-crop")
    focal_face_weight: float = _opt(0.9, "Weight of detected faces in the focal point (0 turns face detection off).",
                                    min=0.0, max=1.0, cli="--focal-face-weight")
    focal_entropy_weight: float = _opt(0.15, "Weight of the most detailed region (0 turns it off).", min=0.0, max=1.0,
                                       cli="--focal-entropy-weight")
    focal_edges_weight: float = _opt(0.5, "Weight of edges/corners (0 turns it off).", min=0.0, max=1.0,
                                     cli="--focal-edges-weight")
    focal_debug: bool = _opt(False, "Also write focal-debug/<name>.png showing the points and the chosen crop.",
                             cli="--focal-debug")
    flip: bool = _opt(False, "Also write a mirrored copy of every output, with the same caption.", cli="--flip")
    caption_action: str = _opt("ignore", "What to do with an existing SRC/<stem>.txt: ignore, copy, prepend, append.",
                               choices=CAPTION_ACTIONS, cli="--caption-action")
    blip: str = _opt("", "Caption with this BLIP model (hub id or local folder); empty for no captioning.",
                     cli="--blip", group="blip", suggest=DEFAULT_BLIP)
    blip_batch_size: int = _opt(8, "Images per BLIP batch.", min=1, max=256, cli="--blip-batch-size", group="blip")
    tagger: str = _opt("", "Caption with booru tags from this WD14-v3-style ONNX tagger: a folder holding model.onnx "
                       "and selected_tags.csv, or a Hugging Face repository id such as "
                       "SmilingWolf/wd-eva02-large-tagger-v3; empty for none.", cli="--tagger", group="tagger",
                       suggest=DEFAULT_TAGGER)
    tag_threshold: float = _opt(0.35, "Tagger: keep a general tag when its confidence is at least this.", min=0.0,
                                max=1.0, cli="--tag-threshold", group="tagger")
    character_threshold: float = _opt(0.85, "Tagger: keep a character tag when its confidence is at least this.",
                                      min=0.0, max=1.0, cli="--character-threshold", group="tagger")
    rating_tags: bool = _opt(False, "Tagger: put the most likely rating tag (general, sensitive, ...) first.",
                             cli="--rating-tags", group="tagger")
    exclude_tags: str = _opt("", "Tagger: comma-separated tags never to write (e.g. 'simple background, solo').",
                             cli="--exclude-tags", group="tagger")
    max_tags: int = _opt(0, "Tagger: write at most this many tags per image, the most confident first (0: all).",
                         min=0, max=1000, cli="--max-tags", group="tagger")
    tag_underscores: bool = _opt(False, "Tagger: keep underscores in tags (blue_hair); by default they become "
                                 "spaces, as the SDXL anime models were prompted.", cli="--tag-underscores",
                                 group="tagger")
    tagger_batch_size: int = _opt(8, "Images per tagger batch.", min=1, max=256, cli="--tagger-batch-size",
                                  group="tagger")
    background: str = _opt("#808080", "Colour that transparent areas are composited on (#rrggbb).", cli="--background")
    max_megapixels: float = _opt(120.0, "Skip images larger than this many megapixels (decompression-bomb guard).",
                                 min=1.0, max=2000.0, cli="--max-megapixels")
    overwrite: bool = _opt(False, "Allow writing into a DEST that already holds images or captions.",
                           cli="--overwrite")

    def validate(self) -> "PreprocessOptions":
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            flag = meta.get("cli", f.name)
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise FieldError(f.name, f"{flag} must be true or false, not {value!r}.")
                continue
            if isinstance(f.default, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise FieldError(f.name, f"{flag} must be a number, not {value!r}.")
                if isinstance(f.default, int) and not float(value).is_integer():
                    raise FieldError(f.name, f"{flag} must be a whole number, not {value!r}.")
                lo, hi = meta.get("min"), meta.get("max")
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise FieldError(f.name, f"{flag} must be between {lo} and {hi}, not {value}.")
            if "choices" in meta and value not in meta["choices"]:
                raise FieldError(f.name, f"{flag} must be one of {', '.join(meta['choices'])}, not {value!r}.")
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise FieldError(name, f"--{name} must be a multiple of 8 (Stable Diffusion works in 8-pixel blocks), "
                                 f"not {getattr(self, name)}.")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.background or ""):
            raise FieldError("background", f"--background must be a colour like #808080, not {self.background!r}.")
        if self.blip.strip() and self.tagger.strip():
            raise FieldError("tagger", "Choose one captioner: --blip (sentences) or --tagger (tags), not both.")
        if self.focal_crop and not (self.focal_face_weight or self.focal_entropy_weight or self.focal_edges_weight):
            raise FieldError("focal_crop", "--focal-crop needs at least one non-zero weight (face, entropy or edges).")
        return self

    @classmethod
    def field_specs(cls) -> list[FieldSpec]:
        """Every option's type, default, help, choices and bounds (see `core.fields`)."""
        return field_specs(cls)

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        h = self.background.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)

    @property
    def captioner(self) -> str:
        """"blip", "tagger" or "none"."""
        return "blip" if self.blip.strip() else "tagger" if self.tagger.strip() else "none"

    def tag_settings(self):
        from core.prep.tagger import TagSettings

        return TagSettings(general_threshold=self.tag_threshold, character_threshold=self.character_threshold,
                           rating=self.rating_tags, exclude=tuple(t for t in self.exclude_tags.split(",") if t.strip()),
                           max_tags=self.max_tags, keep_underscores=self.tag_underscores)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TiwizError(f"Unknown preprocess option(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        return cls(**data).validate()


def option_fields() -> list[dict]:
    """One dict per option for building forms: name, type, default, help, and choices/min/max/cli when set."""
    out = []
    for f in fields(PreprocessOptions):
        entry = {"name": f.name, "type": type(f.default).__name__, "default": f.default}
        entry.update(f.metadata)
        out.append(entry)
    return out
