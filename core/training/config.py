"""`TrainConfig`: every training option, with TOML round-trip and validation that names the field. Torch-free.

Defaults follow A1111's Train tab where users rely on them (lr "0.005", the `style_filewords` template, 512x512,
batch 1, save/preview every 500) and fix what users complain about: aspect-preserving crop instead of a stretch,
3000 steps instead of 100000 (2000-3000 is where TI converges in practice), and a fixed-seed validation loss.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from core.errors import FieldError, TiwizError
from core.fields import FieldSpec, field_specs
from core.training.schedule import parse_schedule

CHOICES = {
    "resize": ("crop", "stretch", "none"),
    "latent_sampling": ("once", "deterministic", "random"),
    "clip_grad": ("none", "value", "norm"),
    "loss_weighting": ("none", "velocity", "min_snr"),
    "optimizer": ("adamw", "prodigy", "adamw8bit"),
    "preview_sampler": ("euler_a", "dpmpp_2m", "ddim", "euler"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "prediction_type": ("auto", "epsilon", "v_prediction"),
    "gradient_checkpointing": ("auto", "on", "off"),
    "compile": ("auto", "on", "off"),
    "norm_mode": ("free", "clamp", "preserve"),
    "kind": ("subject", "style", "negative"),
}
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
SCHEDULE_MAX = {"lr": 10.0, "clip_grad_value": 1e6}  # beyond these, fp32 overflows or the vectors blow up
MAX_NAME_BYTES = 200  # NAME-YYYYmmdd-HHMMSS run folders and NAME-STEP.safetensors files must fit 255 bytes
# Inclusive (min, max) of numeric fields (None = unbounded), checked by validate() and shown by the forms. A field
# whose rule involves other fields or special values (preview_width: 0 or 64-4096) is checked in validate() instead.
BOUNDS = {
    "vectors": (1, 75),
    "steps": (1, 10_000_000),
    "batch_size": (1, 1024),
    "grad_accum": (1, 1024),  # more never ends a step in reasonable time (and a stop is checked per micro-batch)
    "seed": (0, 2 ** 63 - 1),  # torch generators take 64-bit seeds; derived seeds add a few million
    "preview_seed": (0, 2 ** 63 - 1),
    "width": (64, 4096),
    "height": (64, 4096),
    "noise_offset": (0.0, 1.0),
    "save_every": (0, None),
    "preview_every": (0, None),
    "validate_every": (-1, None),
    "validation_images": (1, 64),
    "auto_stop_window": (2, None),
    "holdout": (-1, None),
    "bucket_min_side": (64, 4096),
    "threads": (0, 1024),
    "preview_steps": (1, 1000),
    "preview_cfg": (0.0, None),
    "max_nan_steps": (1, None),
    "norm_clamp_k": (0.1, 100.0),
    "keep_tags": (0, 1000),
}

HELP = {
    "model": "Base model: a diffusers folder or a .safetensors/.ckpt file (SD1.x, SD2.x or SDXL: Pony, Illustrious, NoobAI...)",
    "data": "Folder of training images; same-stem .txt files are their captions",
    "name": "Embedding name: the word you type in prompts and the output file name",
    "init_text": "Text whose token embeddings start the vectors ('*' like A1111; empty = zeros)",
    "vectors": "Vectors per token (1-75): more vectors learn more but use more prompt tokens",
    "steps": "Max optimizer steps (one step = batch_size x grad_accum images)",
    "lr": "Learning rate or A1111 schedule, e.g. '0.005' or '0.005:100, 1e-3:1000, 1e-5'",
    "batch_size": "Images per forward pass",
    "grad_accum": "Forward passes accumulated per optimizer step (the loss is divided by this)",
    "width": "Training width in pixels (multiple of 8)",
    "height": "Training height in pixels (multiple of 8)",
    "resize": "crop: keep aspect, centre-crop; stretch: A1111 stretch; none: native sizes (equal-size batches)",
    "latent_sampling": "once: sample the VAE posterior once; deterministic: its mean; random: resample every step",
    "kind": "What the embedding is for: subject (a thing or character, in the prompt), style (a look, in the "
            "prompt; previews use the style prompts) or negative (an unwanted look, used in the negative prompt; "
            "previews are pairs from one seed: without it, and with it in the negative prompt). With booru-tag "
            "captions it picks the tag template (subject_tags; style_tags for style and negative) when template "
            "is left at its default",
    "template": "Prompt template name (style, style_filewords, subject, subject_filewords, subject_tags, style_tags, "
                "none) or a .txt path",
    "shuffle_tags": "Shuffle the comma-separated tags of each caption every step",
    "keep_tags": "Keep the first N tags of each caption in place when tags are shuffled or dropped (kohya's "
                 "keep_tokens; 0 = none)",
    "tag_dropout": "Probability of dropping each caption tag every step (0-1)",
    "noise_offset": "Offset noise (kohya's --noise_offset): add this times a per-image, per-channel constant to the "
                    "noise so flat colours and backgrounds are learned from the prompt (0 = off; 0.05-0.1 typical)",
    "loss_weighting": "none: plain MSE per timestep (A1111); velocity: weight an epsilon model's loss by 1/alpha_bar(t), "
                      "which is the v-prediction loss, so the noisiest steps, where colours and layout are decided, "
                      "count (no effect on v-prediction models); min_snr: Min-SNR-gamma, min(SNR, min_snr_gamma) on "
                      "the x0 error, which tames the low-noise steps (kohya's --min_snr_gamma)",
    "min_snr_gamma": "Min-SNR-gamma (Hang et al. 2023) for loss_weighting = min_snr: each timestep's loss is weighted "
                     "by min(SNR, gamma)/SNR (epsilon models) or min(SNR, gamma)/(SNR+1) (v-prediction); 5 is the "
                     "paper's value",
    "optimizer": "adamw (torch, weight decay 0 like A1111); prodigy: learning-rate free (pip install prodigyopt; set "
                 "lr to 1); adamw8bit: bitsandbytes 8-bit AdamW (CUDA only; pip install bitsandbytes)",
    "auto_stop": "Stop when the fixed-seed validation loss has gone flat (DVAR rule: its variance over the last "
                 "auto_stop_window steps falls below auto_stop_threshold x its overall variance). Off by default in "
                 "the CLI so `steps` means what it says (A1111 parity), on in the wizard (steps is a ceiling "
                 "there); off, the rule still runs and records the step where it would have stopped",
    "auto_stop_window": "Auto-stop window in steps (DVAR's 'patience'). 100: on the shipped world model (3 seeds) "
                        "the smallest window that never stopped before the concept was learned (50 stopped one "
                        "seed at step 50); larger ones stopped later for no better colour distance. DVAR used 310 "
                        "for SD at lr 5e-3: raise it for big models and low lr",
    "auto_stop_threshold": "Auto-stop threshold: stop when rolling variance / overall variance < this (DVAR: 0.15)",
    "ema_decay": "Keep an exponential moving average of the vectors with this decay and save, preview and "
                 "validate the average instead of the last step's vectors (0 = off, like A1111; 0.95 averages over "
                 "about 20 steps). On the shipped world model (5 seeds) 0.95 ended 0-0.02 "
                 "closer in colour distance, and no sooner good, than the raw vectors",
    "norm_mode": "The vectors' length: free (A1111: not constrained); clamp: each vector at most norm_clamp_k times "
                 "the mean norm of its text encoder's vocabulary; preserve: only the direction trains, each vector "
                 "keeps its initial norm (DTI, arXiv 2512.13672; like OneTrainer's 'Preserve Embedding Norm'). "
                 "Inflated norms make an embedding swamp the rest of a prompt. SDXL: each encoder's vectors on "
                 "their own",
    "norm_clamp_k": "norm_mode = clamp: the largest norm, in multiples of the vocabulary's mean token norm",
    "holdout": "Hold out this many training images: never trained on, their validation loss shows overfitting and "
               "picks the suggested best step (-1 = by dataset size: 1 per 8 images, at most 4, none under 8 "
               "images; 0 = off)",
    "buckets": "Aspect-ratio buckets (kohya): each image is resized to the bucket of its aspect ratio (sides "
               "multiples of 64, area at most width x height) instead of centre-cropped; batches hold one bucket",
    "bucket_min_side": "Smallest bucket side in pixels (kohya's min_bucket_reso)",
    "bucket_max_side": "Largest bucket side in pixels (kohya's max_bucket_reso)",
    "bucket_no_upscale": "Never upscale into a bucket: small images get a bucket of their own size (kohya's "
                         "bucket_no_upscale)",
    "threads": "CPU threads for torch (0 = the cores that are free now: allowed cores minus the load average, at "
               "least 1). Asking for more threads than free cores makes OpenMP threads spin against other jobs",
    "clip_grad": "Gradient clipping: none, value or norm",
    "clip_grad_value": "Clip threshold (a number or a schedule string like lr)",
    "save_every": "Save the embedding and resume state every N steps (0 = only at the end)",
    "preview_every": "Render a preview image every N steps (0 = off)",
    "validate_every": "Compute the fixed-seed validation loss every N steps (-1 = like save_every/preview_every, and "
                      "with auto_stop at least every auto_stop_window/10 steps; 0 = off). Each pass costs a few "
                      "training steps: 10 points a window, not 20, halved auto-stop's validation time on the shipped "
                      "world model and moved its stop by 0-5 steps",
    "validation_images": "How many training images the validation loss uses (fixed images, noise and timesteps)",
    "output": "Output (run) folder; empty = runs/NAME-TIMESTAMP",
    "seed": "Random seed (data order, noise, timesteps, templates); same seed and config = same result",
    "device": "auto, cpu, cuda or mps",
    "precision": "auto: bf16 autocast on GPUs with native bf16 (compute capability 8.0+), else fp16 with a gradient "
                 "scaler; fp32 on CPU/MPS. fp32, bf16 or fp16 force one: fp16 needs a CUDA GPU, bf16 a GPU of 8.0+ or "
                 "a CPU with native bf16 (the avx512_bf16 or amx_bf16 flag; frozen weights stay fp32). auto never "
                 "picks bf16 on CPU: on an avx512_bf16 Xeon without AMX it was 1.2-2.2x slower than fp32",
    "prediction_type": "auto: what the model says (its scheduler config, a v_pred marker key, a .yaml beside it); "
                       "epsilon or v_prediction force one (for v-prediction files without a marker)",
    "gradient_checkpointing": "Recompute UNet activations in the backward pass instead of keeping them: less GPU "
                              "memory for more time (SDXL, 1024 px, batch 1, bf16, on an H200: 7.5 instead of 13 "
                              "GiB, 0.44 instead of 0.21 s a step). auto: off where a model of the step's "
                              "activations (with a 1.5x margin, room for previews) fits the GPU's free memory once "
                              "the model is loaded, on otherwise; a step that still runs out of memory turns it on "
                              "and is retried. Off on CPU/MPS",
    "compile": "Capture the training step as CUDA graphs (the forward, backward and update replayed in one launch "
               "instead of thousands of Python-launched kernels). auto: on CUDA when the run is long enough to win "
               "back the capture time (bf16/fp32 with adamw; fp16 and the other optimizers stay eager), else "
               "eager. on forces it (refused where it cannot run: CPU, MPS, fp16, prodigy, adamw8bit); off is "
               "plain eager. The speed-up and break-even are not yet measured on a GPU",
    "init_from": "Continue from an existing embedding file instead of init_text (empty = off). SDXL: a clip_l + "
                 "clip_g file, or diffusers' two files as 'A,B' (or just learned_embeds.safetensors with its _2 "
                 "partner beside it)",
    "preview_prompt": "Preview prompt with [name] (empty = first template line with the first caption)",
    "preview_negative": "Preview negative prompt",
    "preview_sampler": "Preview sampler: euler_a, dpmpp_2m, ddim or euler",
    "preview_steps": "Preview sampling steps",
    "preview_cfg": "Preview CFG scale",
    "preview_seed": "Preview seed (fixed, so previews are comparable across steps)",
    "preview_width": "Preview width (0 = training width)",
    "preview_height": "Preview height (0 = training height)",
    "max_nan_steps": "Stop with an error after this many consecutive NaN/inf losses",
    "overwrite": "Allow writing into an output folder that already holds a run",
}


@dataclass
class TrainConfig:
    model: str = ""
    data: str = ""
    name: str = ""
    init_text: str = "*"
    vectors: int = 1
    steps: int = 3000
    lr: str = "0.005"
    batch_size: int = 1
    grad_accum: int = 1
    width: int = 512
    height: int = 512
    resize: str = "crop"
    latent_sampling: str = "once"
    kind: str = "subject"
    template: str = "style_filewords"
    shuffle_tags: bool = False
    tag_dropout: float = 0.0
    keep_tags: int = 0
    noise_offset: float = 0.0
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    optimizer: str = "adamw"
    auto_stop: bool = False
    auto_stop_window: int = 100
    auto_stop_threshold: float = 0.15
    ema_decay: float = 0.0
    norm_mode: str = "free"
    norm_clamp_k: float = 2.0
    holdout: int = -1
    buckets: bool = False
    bucket_min_side: int = 256
    bucket_max_side: int = 1024
    bucket_no_upscale: bool = True
    threads: int = 0
    clip_grad: str = "none"
    clip_grad_value: str = "0.1"
    save_every: int = 500
    preview_every: int = 500
    validate_every: int = -1
    validation_images: int = 4
    output: str = ""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    prediction_type: str = "auto"
    gradient_checkpointing: str = "auto"
    compile: str = "auto"
    init_from: str = ""
    preview_prompt: str = ""
    preview_negative: str = ""
    preview_sampler: str = "euler_a"
    preview_steps: int = 20
    preview_cfg: float = 7.0
    preview_seed: int = 0
    preview_width: int = 0
    preview_height: int = 0
    max_nan_steps: int = 10
    overwrite: bool = False

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def field_specs(cls) -> list[FieldSpec]:
        """Every field's type, default, help, choices and bounds (see `core.fields`)."""
        return field_specs(cls, help=HELP, choices=CHOICES, bounds=BOUNDS)

    @classmethod
    def from_dict(cls, data: dict, *, validate: bool = True) -> "TrainConfig":
        """Build from a dict (TOML, JSON, CLI). Unknown keys are refused; values are type-checked per field."""
        if not isinstance(data, dict):
            raise TiwizError(f"config: expected a table of settings, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise TiwizError(f"config: unknown key '{key}'.{hint} Allowed keys: {', '.join(known)}")
            values[key] = _coerce(key, value, known[key].default)
        config = cls(**values)
        if validate:
            config.validate()
        return config

    @classmethod
    def from_toml(cls, path: str | os.PathLike, *, validate: bool = True) -> "TrainConfig":
        path = Path(path)
        try:
            data = load_toml(path)
        except FileNotFoundError:
            raise TiwizError(f"config file not found: {path}") from None
        except (UnicodeDecodeError, IsADirectoryError) as exc:
            raise TiwizError(f"{path}: not a TOML text file ({exc.__class__.__name__})") from None
        except tomllib.TOMLDecodeError as exc:
            raise TiwizError(f"{path}: not valid TOML: {exc}") from None
        data = data.get("train", data) if isinstance(data.get("train"), dict) else data
        try:
            return cls.from_dict(data, validate=validate)
        except FieldError as exc:
            raise FieldError(exc.field, f"{path}: {exc}") from None
        except TiwizError as exc:
            raise TiwizError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_toml_text(self) -> str:
        lines = ["# tiwiz training config (tiwiz train --config FILE.toml)"]
        for key, value in self.to_dict().items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def to_toml(self, path: str | os.PathLike) -> Path:
        from core.atomic import atomic_write_text

        return atomic_write_text(path, self.to_toml_text())

    def replace(self, **changes) -> "TrainConfig":
        data = self.to_dict()
        data.update(changes)
        return TrainConfig.from_dict(data)

    # ---- validation ---------------------------------------------------------------------------------------------
    def validate(self, *, require_paths: bool = True) -> "TrainConfig":
        """Raise FieldError naming the first bad field. `require_paths=False` skips model/data/name presence."""
        for spec in self.field_specs():  # types, choices and BOUNDS, from the field metadata
            spec.check(getattr(self, spec.name))
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise FieldError("device", f"device: must be one of auto, cpu, cuda, cuda:N, mps (got {self.device!r})")
        if self.device in ("cpu", "mps"):  # device auto: decided by the preflight / trainer once the device is known
            from core.models.device import mixed_precision_problem  # torch-free

            problem = mixed_precision_problem(self.device, self.precision)
            if problem:
                raise FieldError("precision", problem)
            from core.models.device import compile_problem  # torch-free

            problem = compile_problem(self.device, self.compile)
            if problem:
                raise FieldError("compile", problem)
        if require_paths:
            for key in ("model", "data", "name"):
                if not str(getattr(self, key)).strip():
                    raise FieldError(key, f"{key}: required ({HELP[key]})")
        for key in ("width", "height"):
            value = getattr(self, key)
            if value % 8:
                raise FieldError(key, f"{key}: must be a multiple of 8 (got {value})")
        for key in ("preview_width", "preview_height"):
            value = getattr(self, key)
            if value:
                _check_range(key, value, 64, 4096)
                if value % 8:
                    raise FieldError(key, f"{key}: must be a multiple of 8, or 0 for the training size (got {value})")
        if not 0.0 <= self.tag_dropout < 1.0:
            raise FieldError("tag_dropout", f"tag_dropout: must be between 0 and 1 (got {self.tag_dropout})")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise FieldError("min_snr_gamma", f"min_snr_gamma: must be a number > 0 (got {self.min_snr_gamma})")
        if not (math.isfinite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise FieldError("ema_decay", f"ema_decay: must be 0 (off) or between 0 and 1 (got {self.ema_decay})")
        if not (math.isfinite(self.auto_stop_threshold) and 0 < self.auto_stop_threshold < 1):
            raise FieldError("auto_stop_threshold",
                             f"auto_stop_threshold: must be between 0 and 1 (got {self.auto_stop_threshold})")
        if self.auto_stop and self.validate_every == 0:
            raise FieldError("auto_stop",
                             "auto_stop: needs the validation loss; set validate_every to -1 (automatic) or > 0")
        _check_range("bucket_max_side", self.bucket_max_side, self.bucket_min_side, 4096)
        for key in ("bucket_min_side", "bucket_max_side"):
            if getattr(self, key) % 64:
                raise FieldError(key, f"{key}: must be a multiple of 64 (got {getattr(self, key)})")
        for key in ("lr", "clip_grad_value"):
            try:
                schedule = parse_schedule(getattr(self, key), key)
            except FieldError:
                raise
            except TiwizError as exc:
                raise FieldError(key, str(exc)) from None
            high = max(rate for rate, _ in schedule.pairs)
            if high > SCHEDULE_MAX[key]:
                raise FieldError(key, f"{key}: {high:g} is too large (at most {SCHEDULE_MAX[key]:g}; textual inversion "
                                      f"uses about 0.005)" if key == "lr" else
                                 f"{key}: {high:g} is too large (at most {SCHEDULE_MAX[key]:g})")
        _check_text_fields(self)
        if any(ch in self.name for ch in "/\\") or self.name.strip() in (".", ".."):
            raise FieldError("name", f"name: must not contain path separators (got {self.name!r})")
        return self

    # ---- derived values -----------------------------------------------------------------------------------------
    def effective_validate_every(self) -> int:
        """-1 follows save_every/preview_every; with auto_stop, often enough for the rule's window (about 10 points
        per window: autostop.points_needed)."""
        if self.validate_every >= 0:
            return self.validate_every
        every = self.save_every or self.preview_every
        if self.auto_stop:
            from core.training.autostop import points_needed

            dense = points_needed(self.auto_stop_window)
            every = min(every, dense) if every else dense
        return every

    def effective_holdout(self, n_images: int) -> int:
        """How many images to hold out of n: `holdout` if set (never all but one), else 1 per 8 images, at most 4,
        none under 8 images."""
        if self.holdout == 0 or n_images < 8:
            return 0
        if self.holdout > 0:
            return min(self.holdout, n_images - 1)
        return min(4, n_images // 8)


def load_toml(path: str | os.PathLike) -> dict:
    """tomllib.load that also reads files starting with a UTF-8 byte-order mark (Windows Notepad writes one).
    Raises FileNotFoundError, tomllib.TOMLDecodeError, or UnicodeDecodeError as tomllib does."""
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:  # a hostile file: every caller already reports a decode error in one line
        raise tomllib.TOMLDecodeError("nested too deeply (arrays or tables inside each other)") from None


def _check_text_fields(config) -> None:
    """NULs, over-long names and an --output that is a file: one line naming the field, never a traceback later."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, str) and "\0" in value:
            raise FieldError(f.name, f"{f.name}: contains a NUL character (\\0), which no file name can hold")
    if len(config.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise FieldError("name", f"name: {len(config.name.encode('utf-8', 'surrogateescape'))} bytes long; at most "
                                 f"{MAX_NAME_BYTES} (file and folder names are made from it)")
    if config.output:
        for part in Path(config.output).parts:
            if len(os.fsencode(part)) > 255:
                raise FieldError("output", f"output: the folder name {part[:40]}... is {len(os.fsencode(part))} "
                                           "bytes long; file systems allow 255")
        out = Path(config.output).expanduser()
        if out.exists() and not out.is_dir():
            raise FieldError("output", f"output: {out} is a file, not a folder; choose a folder for the run")


def _check_range(key: str, value, low, high) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(key, f"{key}: must be a whole number (got {value!r})")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise FieldError(key, f"{key}: must be {bound} (got {value})")


def _coerce(key: str, value, default):
    """Convert a TOML/JSON/CLI value to the field's type (the type of its default); the error names the field."""
    if key in ("lr", "clip_grad_value") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, float) else str(value)  # schedule strings: `lr = 0.005` is fine
    return FieldSpec(key, type(default), default).coerce(value)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)
