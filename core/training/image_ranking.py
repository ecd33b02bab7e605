"""The images that fight the concept: each training image's fixed-seed loss under the final embedding, ranked against
the others, with the worst few named and a reason a user can act on.

For each image the same fixed noise and timesteps (`VALIDATION_TIMESTEPS`) give three losses, plain MSE like the
validation loss:

- `loss`: the training prompt (the template's first line with [name] and [filewords], the image's caption);
- `loss_without`: the same prompt with the embedding taken out;
- `loss_bare` (only where the prompt holds a caption): the prompt with neither, the template's own words.

What the embedding does for an image is its gain, the mean over the timesteps of log(loss_without / loss): how much
of the image it explains beyond the caption (in logs, each noise level counts the same; the low-noise losses are the
largest and say least about the prompt). An image that is fine for the concept gains about as much as the others; one that fights it gains much less
or loses (its gradient pulls the vectors elsewhere). Each image's gain is put against the others' as a robust z-score
(median and MAD), so a dataset's overall level does not matter. Listed, worst first and at most `TOP`: the images
at least `FLAG_Z` below the others, and those the embedding fits worse than no embedding at all (gain under
`HURT_GAIN`) that are also below the others (`HURT_Z`). The reason given:

- `caption`: the caption already says what the embedding should learn: it names the init text or the trigger word,
  or it explains this image far better than the other captions explain theirs (log(loss_bare / loss_without)
  unusually high); the concept is then learned by the words, not by the embedding.
- `crop`: a centre crop (or bucket) kept little of the image (under `CROP_KEPT` of its area).
- `subject`: otherwise the image looks unlike the others to the model: another subject, a busy background, another
  style.

The result is a typed file, `image_ranking.json` in the run folder (`ImageRanking`), written at the end of a run and
by `tiwiz doctor --run RUN`. This module is torch-free at import (the wizard reads the file through it).
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

RANKING_FILE = "image_ranking.json"
RANK_AT_END_MAX = 64  # images a run ranks at its end (about 10 UNet passes each); more: `tiwiz doctor --run`
FORMAT_VERSION = 1
FLAG_Z = 2.5  # robust z below the others' median gain from which an image is listed
HURT_GAIN = -0.05  # an image the embedding fits worse than no embedding at all (log ratio) ...
HURT_Z = 1.0  # ... is listed from this robust z
TOP = 5
CROP_KEPT = 0.6
REASONS = {
    "caption": "its caption already names what the embedding should learn{detail}: the words learn it instead of the "
               "embedding. Take those words out of the caption (keep what differs from image to image)",
    "crop": "the crop keeps only {kept:.0%} of the image: crop it by hand around the subject, or train with "
            "buckets (--buckets)",
    "subject": "the embedding explains it much less than the other images: a different subject, a busy background "
               "or another style. Remove it, or caption what differs",
}


@dataclass(frozen=True)
class RankedImage:
    image: str  # the image file (absolute path)
    caption: str = ""
    loss: float = 0.0  # fixed-seed loss with the training prompt and the final embedding
    loss_without: float = 0.0  # the same without the embedding
    loss_bare: float | None = None  # neither embedding nor caption (only when the prompt holds a caption)
    gain: float = 0.0  # mean over timesteps of log(loss_without / loss): what the embedding explains of this image
    score: float = 0.0  # robust z of the gain's shortfall against the other images (higher: fights the concept more)
    flagged: bool = False
    reason: str = ""  # a key of REASONS for a flagged image, else ""
    message: str = ""  # the reason in words
    held_out: bool = False  # one of the run's held-out images (never trained on)
    kept: float | None = None  # fraction of the image's area its crop kept


@dataclass(frozen=True)
class ImageRanking:
    step: int  # the step of the embedding it measured
    embedding: str = ""  # the embedding file, relative to the run folder
    prompt: str = ""  # the template line used, with [name] and [filewords]
    images: tuple = field(default_factory=tuple)  # RankedImage, worst first
    version: int = FORMAT_VERSION

    @property
    def flagged(self) -> list[RankedImage]:
        return [im for im in self.images if im.flagged]

    def to_json(self) -> dict:
        out = asdict(self)
        out["images"] = [asdict(im) for im in self.images]
        return out

    @classmethod
    def from_json(cls, data) -> "ImageRanking":
        """Raises ValueError naming what is wrong; unknown keys are ignored (a newer writer)."""
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError("not an image ranking (no list of images)")
        images = tuple(RankedImage(**_typed(RankedImage, item)) for item in data["images"])
        return cls(**{**_typed(cls, {k: v for k, v in data.items() if k != "images"}), "images": images})

    def summary_lines(self, top: int = TOP) -> list[str]:
        """The flagged images in words, one line each ('' list when none stands out)."""
        return [f"{Path(im.image).name}: {im.message}" for im in self.flagged[:top]]


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "float | None": (int, float, type(None)),
          "tuple": (list, tuple)}


def _typed(cls, data) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"expected an object for {cls.__name__}")
    out = {}
    for f in fields(cls):
        if f.name not in data or f.name == "images":
            continue
        value = data[f.name]
        want = _TYPES.get(str(f.type), object)
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool) and str(f.type) != "bool"):
            raise ValueError(f"{f.name!r} has the wrong type ({type(value).__name__})")
        out[f.name] = float(value) if str(f.type).startswith("float") and value is not None else value
    return out


def write_ranking(run_dir, ranking: ImageRanking) -> Path:
    from core.atomic import atomic_write_text

    return atomic_write_text(Path(run_dir) / RANKING_FILE, json.dumps(ranking.to_json(), ensure_ascii=False,
                                                                      indent=1) + "\n")


def read_ranking(run_dir) -> ImageRanking | None:
    """The run's ranking, None when there is none; ValueError when the file cannot be read as one."""
    path = Path(run_dir) / RANKING_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} cannot be read: {exc}") from None
    try:
        return ImageRanking.from_json(json.loads(text))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"{path.name} is not an image ranking: {exc}") from None


# ---- the statistics (plain Python) ----------------------------------------------------------------------------------
def robust_z(values: list[float]) -> list[float]:
    """(value - median) / (1.4826 x MAD) for each value; the MAD is floored so that near-equal values give small z."""
    if not values:
        return []
    ordered = sorted(values)
    median = _median(ordered)
    mad = _median(sorted(abs(v - median) for v in values))
    spread = max(1.4826 * mad, 1e-3 * (abs(median) + 1e-6), 1e-9)
    return [(v - median) / spread for v in values]


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def kept_fraction(original_size, size) -> float | None:
    """The share of an image's area an aspect-preserving crop to `size` keeps (None without an original size)."""
    if not original_size or not size or min(original_size) <= 0 or min(size) <= 0:
        return None
    a_orig = original_size[0] / original_size[1]
    a_new = size[0] / size[1]
    return min(a_orig / a_new, a_new / a_orig)


def names_concept(caption: str, words: list[str]) -> str:
    """The first of `words` (the init text's, the trigger word) that the caption contains as a word, else ''."""
    lowered = caption.lower()
    for word in words:
        word = word.strip().lower()
        if len(word) >= 3 and word.isascii() and re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", lowered):
            return word
    return ""


def mean_log_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The mean over timesteps of log(numerator / denominator): each noise level counts the same, whatever the size
    of its loss (the low-noise ones are the largest and say least about the prompt)."""
    logs = [math.log(max(a, 1e-12) / max(b, 1e-12)) for a, b in zip(numerators, denominators)]
    return sum(logs) / len(logs)


def rank(measured: list[dict], *, concept_words: list[str], resize: str = "crop") -> list[RankedImage]:
    """Rank measured images (`measure_images`), worst first, and give the flagged ones their reason."""
    gains = [mean_log_ratio(m["per_t"][1], m["per_t"][0]) for m in measured]
    scores = [-z for z in robust_z(gains)]
    bare = [i for i, m in enumerate(measured) if len(m["per_t"]) > 2]
    caption_z = dict(zip(bare, robust_z([mean_log_ratio(measured[i]["per_t"][2], measured[i]["per_t"][1])
                                         for i in bare])))
    order = sorted(range(len(measured)), key=lambda i: -scores[i])
    out = []
    for position, i in enumerate(order):
        m = measured[i]
        losses = [sum(values) / len(values) for values in m["per_t"]]
        kept = kept_fraction(m.get("original_size"), m.get("size")) if resize != "stretch" else None
        flagged = position < TOP and (scores[i] >= FLAG_Z or (gains[i] <= HURT_GAIN and scores[i] >= HURT_Z))
        reason, message = _reason(m, caption_z.get(i), kept, concept_words) if flagged else ("", "")
        out.append(RankedImage(image=str(m["image"]), caption=m.get("caption", ""), loss=losses[0],
                               loss_without=losses[1], loss_bare=losses[2] if len(losses) > 2 else None,
                               gain=gains[i], score=scores[i], flagged=flagged, reason=reason, message=message,
                               held_out=bool(m.get("held_out")), kept=kept))
    return out


def _reason(m: dict, caption_z: float | None, kept: float | None, concept_words: list[str]) -> tuple[str, str]:
    said = names_concept(m.get("caption", ""), concept_words) if len(m["per_t"]) > 2 else ""
    if said or (caption_z is not None and caption_z >= FLAG_Z):
        return "caption", REASONS["caption"].format(detail=f" ('{said}')" if said else "")
    if kept is not None and kept < CROP_KEPT:
        return "crop", REASONS["crop"].format(kept=kept)
    return "subject", REASONS["subject"]


# ---- measuring (torch inside) ---------------------------------------------------------------------------------------
def ranking_prompt(template_lines: list[str]) -> str:
    """The template line the ranking uses: the first with both [name] and [filewords], else the first with [name]."""
    from core.training.templates import FILEWORDS, NAME

    with_name = [line for line in template_lines if NAME in line] or list(template_lines)
    return next((line for line in with_name if FILEWORDS in line), with_name[0])


def _prompts(line: str, placeholder: str, caption: str) -> tuple[str, str, str | None]:
    from core.training.templates import FILEWORDS, render

    def tidy(text: str) -> str:
        text = re.sub(r"\s+", " ", text)
        return re.sub(r"\s*,(\s*,)+", ",", text).strip(" ,")

    rng = random.Random(0)
    with_embedding = render(line, placeholder, caption, rng=rng)
    without = tidy(render(line, "", caption, rng=rng))
    has_caption = FILEWORDS in line and bool(caption.strip())
    bare = tidy(render(line, "", "", rng=rng)) if has_caption else None
    return with_embedding, without, bare


def measure_images(dataset, loss_of: Callable, *, line: str, placeholder: str, held_out=(),
                   progress: Callable | None = None) -> list[dict]:
    """The losses of every image of `dataset` (core.training.dataset.TrainDataset), per timestep: `per_t` holds one
    list for the prompt with the embedding, one without it and, where the prompt holds a caption, one with neither.
    `loss_of(index, prompts)` returns them (`fixed_loss_function`), with the same noise and timesteps for all."""
    held = set(held_out)
    out = []
    for i, item in enumerate(dataset.items):
        with_embedding, without, bare = _prompts(line, placeholder, item.caption)
        prompts = [with_embedding, without] + ([bare] if bare is not None else [])
        losses = loss_of(i, prompts)
        out.append({"image": str(item.path), "caption": item.caption, "per_t": losses, "held_out": i in held,
                    "original_size": item.original_size, "size": item.size})
        if progress is not None:
            progress(i + 1, len(dataset.items))
    return out


def fixed_loss_function(batch_loss: Callable, dataset, *, seed: int, timesteps, sdxl: bool) -> Callable:
    """`loss_of(index, prompts)` for `measure_images` from a trainer's loss: `batch_loss(prompts, latents, noise,
    timesteps, time_ids)` -> the per-sample losses [len(timesteps)] (plain MSE). The noise of image i comes from a
    generator seeded with seed and i, so any subset of the images measures the same. Each prompt's loss is a list,
    one value per timestep."""
    import torch

    steps = torch.tensor(timesteps, dtype=torch.long)

    def loss_of(index: int, prompts: list[str]) -> list[list[float]]:
        item = dataset.items[index]
        latents = item.mean.unsqueeze(0).repeat(len(steps), 1, 1, 1)
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed + 3_000_017 + index))
        time_ids = dataset.time_ids([index] * len(steps)) if sdxl else None
        with torch.no_grad():
            return [batch_loss([prompt] * len(steps), latents, noise, steps, time_ids).float().cpu().tolist()
                    for prompt in prompts]

    return loss_of


def rank_session(s, progress: Callable | None = None) -> ImageRanking:
    """Rank the images of a training session (core.training.session.Session, or any object with the attributes
    `update.batch_loss` reads and those below) under the vectors it saves (the average, with ema_decay)."""
    from core.training import update
    from core.training.validation import VALIDATION_TIMESTEPS

    cfg = s.config
    line = ranking_prompt(s.template.lines)

    def per_sample(prompts, latents, noise, timesteps, time_ids):
        """One plain-MSE loss per timestep (the validation's loss, one sample at a time)."""
        import torch

        return torch.stack([update.batch_loss(s, [], None, prompts=prompts[k:k + 1], latents=latents[k:k + 1],
                                              noise=noise[k:k + 1], timesteps=timesteps[k:k + 1],
                                              time_ids=None if time_ids is None else time_ids[k:k + 1])
                            for k in range(len(prompts))])

    loss_of = fixed_loss_function(per_sample, s.dataset, seed=cfg.seed, timesteps=VALIDATION_TIMESTEPS,
                                  sdxl=s.model.family == "sdxl")
    with s.averaged():
        measured = measure_images(s.dataset, loss_of, line=line, placeholder=s.placeholder,
                                  held_out=s.holdout_indices, progress=progress)
    words = (cfg.init_text or "").replace(",", " ").split() + [cfg.name]
    ranked = rank(measured, concept_words=words, resize="buckets" if cfg.buckets else cfg.resize)
    return ImageRanking(step=s.step, embedding=f"{s.name}.safetensors", prompt=line, images=tuple(ranked))


def rank_run_folder(run_dir, progress: Callable | None = None) -> ImageRanking:
    """Rank the images of a finished (or stopped) run folder under its final embedding, else its latest checkpoint:
    its model, data and settings from its config.toml. Writes nothing (`write_ranking` does)."""
    import contextlib
    import types

    import torch

    from core.embeddings.vectors import load_embedding, sanitize_name
    from core.errors import TiwizError
    from core.events import ListSink
    from core.training import session as sessions
    from core.training.conditioning import encoder_slots
    from core.training.config import TrainConfig
    from core.training.splice import splice_vectors
    from core.training.update import TokenCache

    run_dir = Path(run_dir)
    cfg = TrainConfig.from_toml(run_dir / "config.toml")
    name = sanitize_name(cfg.name)
    embedding = run_embedding_file(run_dir, name)
    if embedding is None:
        raise TiwizError(f"{run_dir}: no embedding saved yet (no final file, no checkpoint) to rank the images with")
    sink = ListSink()  # the loaders' warnings (SDXL at low resolution, skipped images) are the training's, not ours
    _, device, precision, model = sessions._load_model(cfg, sink)
    slots = encoder_slots(model)
    loaded = load_embedding(embedding, expected_dim=sum(slot.width for slot in slots), family=model.family,
                            widths=tuple(slot.width for slot in slots) if model.family == "sdxl" else None)
    vectors = torch.nn.Parameter(loaded.vectors.float().to(device), requires_grad=False)
    _, placeholder = splice_vectors(slots, vectors)
    template, dataset, _, holdout = sessions._load_data(cfg, model, device, sink)
    s = types.SimpleNamespace(
        config=cfg, model=model, device=device, precision=precision, unet_dtype=next(model.unet.parameters()).dtype,
        tokens=TokenCache(placeholder), dataset=dataset, template=template, placeholder=placeholder,
        holdout_indices=holdout, name=name, step=_checkpoint_step(embedding) if embedding.parent.name ==
        "embeddings" else int(loaded.step or 0), averaged=contextlib.nullcontext)
    return replace(rank_session(s, progress), embedding=str(embedding.relative_to(run_dir)))


def run_embedding_file(run_dir, name: str) -> Path | None:
    """A run's final NAME.safetensors, else its latest checkpoint's, else None (what it has on disk)."""
    run_dir = Path(run_dir)
    files = [run_dir / f"{name}.safetensors"] + sorted(
        (run_dir / "embeddings").glob(f"{name}-*.safetensors"), key=_checkpoint_step, reverse=True)
    return next((f for f in files if f.is_file()), None)


def _checkpoint_step(path: Path) -> int:
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def record_ranking(s) -> None:
    """At the end of a finished run: rank session `s`'s images, write image_ranking.json and emit `images_ranked`.
    A failure is a warning: the embedding is saved and the run is done whatever happens here."""
    from core.runs import run_events as ev

    if len(s.dataset) > RANK_AT_END_MAX:
        s.sink.emit(ev.Warning(step=s.step, message=(
            f"the {len(s.dataset)} training images were not ranked at the end of the run (more than "
            f"{RANK_AT_END_MAX}: about 10 model passes each); `tiwiz doctor --run {s.out_dir}` ranks them and "
            "names the ones that fight the concept")))
        return
    try:
        ranking = rank_session(s)
        write_ranking(s.out_dir, ranking)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never cost a finished training
        s.sink.emit(ev.Warning(step=s.step, message=f"could not rank the training images: "
                                                    f"{exc.__class__.__name__}: {exc}"))
        return
    flagged = ranking.flagged
    s.sink.emit(ev.ImagesRanked(step=s.step, path=RANKING_FILE, n_images=len(ranking.images),
                                flagged=[im.image for im in flagged], reasons=[im.message for im in flagged]))
