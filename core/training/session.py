"""A training's state as one value. `setup()` loads the model, makes the vectors, caches the data, builds the
optimizer and, on resume, restores all of it from state/latest.pt, into one `Session`. The loop
(`core.training.trainer`) and each concern it calls take that value: the step (`update`), the NaN/norm guard
(`guard`), the validation (`validation`, `watch`), the checkpoints (`checkpoints`) and the reports and previews
(`reports`).

- The trained vectors are one fp32 `nn.Parameter [n, dim]`, spliced into the frozen text encoder(s)
  (`core.training.splice`); SDXL's holds CLIP-L's and bigG's columns side by side (`core.training.conditioning`).
- Every RNG the run draws from is its own (a torch Generator for noise and timesteps, a random.Random for the data
  order and the prompts), saved in the state; validation and previews use their own fixed seeds.
- The grad scaler is always there and simply disabled unless the precision is fp16.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.atomic import remove_stale_temps
from core.embeddings.vectors import init_vectors, load_embedding, sanitize_name, trigger_problems
from core.errors import TiwizError
from core.models import loader as model_loader  # through the module: benches hand the trainer an in-memory model
from core.models.device import Precision, pick_device, precision_for
from core.prep.buckets import bucketer_for
from core.runs import run_events as ev
from core.training import checkpoints, guard
from core.training.capture import enable_checkpointing
from core.training.conditioning import encoder_slots
from core.training.config import TrainConfig
from core.training.editability import EditabilityProbe, run_probe
from core.training.norms import NormControl
from core.training.dataset import build_dataset
from core.training.optimizers import lr_warning, make_optimizer
from core.training.kinds import training_template
from core.training.reports import VectorReports
from core.training.resume_state import data_fingerprint, describe_data_change, load_state
from core.training.schedule import Schedule, parse_schedule
from core.training.splice import splice_vectors
from core.training.templates import load_template
from core.training.threads import ThreadChoice
from core.training.update import DataFeed, TokenCache
from core.training.validation import HOLDOUT_SEED_OFFSET, fixed_set
from core.training.vector_ema import VectorEMA
from core.training.watch import Watch


@dataclass(eq=False)
class Session:
    # the run
    config: TrainConfig          # the run's own copy; config.toml records it
    out_dir: Path
    name: str                    # the embedding's file name (the sanitised trigger)
    sink: Any                    # where events go
    resumed: bool
    data_fingerprint: list | None
    # the model and how it computes
    threads: ThreadChoice
    device: torch.device
    precision: Precision
    model: Any                   # core.models.loaded_model.LoadedModel, frozen
    unet_dtype: torch.dtype
    scaler: torch.amp.GradScaler
    # the trained vectors
    slots: list                  # conditioning.EncoderSlot per text encoder
    vectors: torch.nn.Parameter
    splices: list
    placeholder: str             # the prompt text that stands for the vectors
    tokens: TokenCache
    lr_schedule: Schedule
    clip_schedule: Schedule
    optimizer: torch.optim.Optimizer
    ema: VectorEMA | None
    norms: NormControl           # norm_mode: the vectors' length (after every step, and the average's)
    generator: torch.Generator   # noise, timesteps (and `random` latents)
    # the data
    dataset: Any                 # core.training.dataset.TrainDataset
    template: Any                # core.training.templates.Template
    feed: DataFeed               # the data order over the training images
    holdout_indices: list[int]
    validate_every: int
    validation_set: list
    holdout_set: list
    watch: Watch
    reports: VectorReports
    guard: guard.GuardState | None = None
    editability: EditabilityProbe | None = None  # measured at each validation (none without validation)
    # progress: all of it is saved in state/latest.pt
    step: int = 0
    lr_scale: float = 1.0        # halved by each rollback to a checkpoint
    elapsed_before: float = 0.0  # training seconds of earlier lives
    last_saved_step: int = -1
    last_loss: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def train_indices(self) -> list[int]:
        return self.feed.indices

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started_at)

    def averaged(self):
        """With ema_decay: the vectors' average in place of the raw ones (validation, previews), else nothing."""
        return self.ema.swapped_in(self.vectors) if self.ema is not None else contextlib.nullcontext()

    def saved_vectors(self) -> torch.Tensor:
        """What checkpoints and the final files hold: the average with ema_decay, else the vectors."""
        return (self.ema.average if self.ema is not None else self.vectors).detach()


def setup(config: TrainConfig, out_dir, sink, resume: bool = False, allow_data_change: bool | None = None) -> Session:
    """The session of a run in `out_dir` (its config adjusted in place: the vector count actually trained). With
    resume, continued from out_dir/state/latest.pt. `allow_data_change` None: $TIWIZ_ALLOW_DATA_CHANGE=1."""
    cfg = config.validate()
    out_dir = Path(out_dir)
    name = _prepare_out_dir(cfg, out_dir, resume)
    lr_schedule, clip_schedule = parse_schedule(cfg.lr, "lr"), parse_schedule(cfg.clip_grad_value, "clip_grad_value")
    state = load_state(out_dir / checkpoints.STATE) if resume else None
    fingerprint, data_changed = _check_data(cfg, state, sink, allow_data_change)
    threads, device, precision, model = _load_model(cfg, sink)
    slots, vectors, splices, placeholder = _make_vectors(cfg, model, device, state, sink, name)
    norms = NormControl.for_slots(cfg.norm_mode, cfg.norm_clamp_k, slots, vectors)
    if state is None:
        norms.apply(vectors)  # an init_from file over the clamp starts at it (resume: the state's vectors as saved)
    template, dataset, feed, holdout = _load_data(cfg, model, device, sink)
    optimizer = make_optimizer(cfg.optimizer, [vectors], lr_schedule.rate_at(0), device.type)
    warning = lr_warning(cfg.optimizer, cfg.lr)
    if warning:
        sink.emit(ev.Warning(message=warning))
    s = Session(
        config=cfg, out_dir=out_dir, name=name, sink=sink, resumed=state is not None, data_fingerprint=fingerprint,
        threads=threads, device=device, precision=precision, model=model,
        unet_dtype=next(model.unet.parameters()).dtype,
        scaler=torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler),
        slots=slots, vectors=vectors, splices=splices, placeholder=placeholder, tokens=TokenCache(placeholder),
        lr_schedule=lr_schedule, clip_schedule=clip_schedule, optimizer=optimizer,
        ema=VectorEMA(vectors, cfg.ema_decay) if cfg.ema_decay > 0 else None, norms=norms,
        generator=torch.Generator().manual_seed(cfg.seed),
        dataset=dataset, template=template, feed=feed, holdout_indices=holdout,
        validate_every=cfg.effective_validate_every(),
        validation_set=fixed_set(cfg, dataset, feed.indices, template, placeholder, model.family),
        holdout_set=fixed_set(cfg, dataset, holdout, template, placeholder, model.family, HOLDOUT_SEED_OFFSET)
        if holdout else [],
        watch=Watch(cfg.auto_stop_window, cfg.auto_stop_threshold), reports=VectorReports(),
        editability=run_probe(model, slots, vectors, placeholder, cfg.init_text, device, precision.autocast)
        if cfg.effective_validate_every() else None)
    if state is not None:
        checkpoints.restore(s, state)
        if data_changed:  # the saved batch order indexes the old image list
            s.feed.batches, s.feed.pos = [], 0
    s.guard = guard.start(s)
    return s


def _prepare_out_dir(cfg: TrainConfig, out_dir: Path, resume: bool) -> str:
    """The run's file name; the folder made, temp files of a save killed mid-write removed, and a fresh run refused
    in a folder that holds one (unless overwrite)."""
    name = sanitize_name(cfg.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir, ("embeddings", "previews", "state"))
    if not resume:
        markers = [p for p in (checkpoints.STATE, "loss.csv", f"{name}.pt") if (out_dir / p).exists()]
        if markers and not cfg.overwrite:
            raise TiwizError(f"{out_dir} already holds a training run ({markers[0]}); resume it, choose another "
                             "output folder, or pass --overwrite to start over in it")
    return name


def _check_data(cfg: TrainConfig, state: dict | None, sink, allowed: bool | None) -> tuple[list | None, str | None]:
    """(the data folder's fingerprint (names, sizes, mtimes; saved in the state), what changed since the state's
    checkpoint). A folder that changed is refused unless allowed (then a warning)."""
    try:
        fingerprint = data_fingerprint(cfg.data)
    except TiwizError:
        return None, None  # a missing folder: build_dataset says so in its own words
    if state is None:
        return fingerprint, None
    change = describe_data_change(state.get("data_fingerprint"), fingerprint)
    if change is None:
        return fingerprint, None
    if allowed is None:
        allowed = os.environ.get("TIWIZ_ALLOW_DATA_CHANGE") == "1"  # set by `tiwiz resume --allow-data-change`
    where = f"the data folder {cfg.data} changed since the checkpoint at step {state.get('step')}: {change}"
    if not allowed:
        raise TiwizError(f"data: {where}. Put the images back, or resume with --allow-data-change to train on "
                         "the folder as it is now")
    sink.emit(ev.Warning(message=f"{where}; training goes on with the folder as it is now (--allow-data-change)"))
    return fingerprint, change


def _load_model(cfg: TrainConfig, sink) -> tuple[ThreadChoice, torch.device, Precision, Any]:
    threads = ThreadChoice(cfg.threads)  # the free cores, not all cores (OpenMP spinning)
    threads.apply()
    device = pick_device(cfg.device)
    precision = precision_for(device, cfg.precision)
    prediction = None if cfg.prediction_type == "auto" else cfg.prediction_type
    model = model_loader.load_model(cfg.model, device=device, prediction_type=prediction,
                                    dtype=frozen_weights_dtype(device, precision))
    for module in model.modules:
        module.requires_grad_(False)
        module.eval()
    if cfg.gradient_checkpointing == "on":  # auto: decided once the data is cached (core.training.step_plan)
        enable_checkpointing(model.unet)  # frozen weights: only the activations are recomputed
    if model.family == "sdxl" and max(cfg.width, cfg.height) < 768:
        sink.emit(ev.Warning(message=(
            f"SDXL models are made for 1024 px; training at {cfg.width}x{cfg.height} is faster but the embedding may "
            "fit full-size images less well (--width 1024 --height 1024)")))
    return threads, device, precision, model


def frozen_weights_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """bf16 on CUDA with bf16 autocast (any family: half the memory, and autocast no longer casts each weight at each
    forward), else None (fp32). fp16 autocast keeps fp32 weights: the ops autocast leaves in fp32 (norms, softmax,
    the loss) then keep fp32's range, which fp16 weights would not. CPU bf16 autocast keeps fp32 weights too: bf16
    ones were still slower than plain fp32 there (bench/RESULTS.md). The trained vectors stay fp32 either way."""
    if device.type != "cuda" or precision.autocast_dtype != torch.bfloat16:
        return None
    return torch.bfloat16


def _make_vectors(cfg: TrainConfig, model, device, state: dict | None, sink, name: str) -> tuple:
    """(the encoder slots, the trained vectors, their splices, their placeholder text). The vectors come from the
    state on resume, else init_from, else init_text (A1111's semantics, for each encoder from its own vocabulary).
    Sets cfg.vectors to the count actually trained."""
    slots = encoder_slots(model)
    dim = sum(slot.width for slot in slots)
    if state is not None:
        initial = state["vectors"].float()
    elif cfg.init_from:
        loaded = load_embedding(cfg.init_from, expected_dim=dim, family=model.family,
                                widths=tuple(slot.width for slot in slots) if model.family == "sdxl" else None)
        for message in loaded.warnings:
            sink.emit(ev.Warning(message=message))
        initial = loaded.vectors.float()
        if initial.shape[0] != cfg.vectors:
            sink.emit(ev.Warning(message=f"init_from has {initial.shape[0]} vectors; using that instead of "
                                         f"vectors = {cfg.vectors}"))
    else:
        initial = torch.cat([init_vectors(slot.tokenizer, slot.encoder, cfg.init_text, cfg.vectors).float()
                             for slot in slots], dim=1)
    if initial.shape[-1] != dim:
        raise TiwizError(f"the embedding is {initial.shape[-1]} wide but this model's text encoder is {dim} wide")
    vectors = torch.nn.Parameter(initial.detach().clone().to(device))
    cfg.vectors = int(initial.shape[0])  # what config.toml records: the count actually trained (init_from, resume)
    splices, placeholder = splice_vectors(slots, vectors)
    if model.family == "sdxl":
        sink.emit(ev.Warning(message=(
            "SDXL: the embedding is saved as NAME.safetensors only, with clip_l and clip_g tensors (the layout "
            "A1111/Forge, ComfyUI, InvokeAI and SD.Next load); there is no .pt format for SDXL embeddings")))
    for problem in trigger_problems(model.tokenizer, name, initial.shape[0]):
        sink.emit(ev.Warning(message=f"name: {problem}"))
    return slots, vectors, splices, placeholder


def _load_data(cfg: TrainConfig, model, device, sink) -> tuple[Any, Any, DataFeed, list[int]]:
    """(the template, the dataset with its latents cached, the data order over the training images, the held-out
    images): the hold-out drawn with its own seed, the batch size no larger than the training images."""
    template = load_template(cfg.template)  # a bad template fails before the latents are cached
    dataset = build_dataset(cfg.data, vae=model.vae, width=cfg.width, height=cfg.height, resize=cfg.resize,
                            latent_sampling=cfg.latent_sampling, seed=cfg.seed, sink=sink, device=device,
                            bucketer=bucketer_for(cfg) if cfg.buckets else None)
    chosen, _ = training_template(cfg.template, cfg.kind, [item.caption for item in dataset.items])
    if chosen != cfg.template:  # tag captions: the kind's tag template (core.training.kinds)
        template = load_template(chosen)
    n = len(dataset)
    batch_size = min(cfg.batch_size, n)
    if batch_size < cfg.batch_size:
        sink.emit(ev.Warning(message=f"batch_size {cfg.batch_size} is more than the {n} images; using {batch_size}"))
    n_hold = cfg.effective_holdout(n)
    if cfg.holdout > 0 and not n_hold:
        sink.emit(ev.Warning(message=f"holdout {cfg.holdout} ignored: {n} images are too few to hold any out (8 or "
                                     "more needed)"))
    held = set(random.Random(cfg.seed + 4243).sample(range(n), n_hold)) if n_hold else set()
    train = [i for i in range(n) if i not in held]
    if n_hold and batch_size > len(train):
        batch_size = len(train)
    return template, dataset, DataFeed(dataset, train, batch_size, random.Random(cfg.seed)), sorted(held)
