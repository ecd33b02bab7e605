"""Shared helpers for the trainer tests (tests/test_train_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model steps are far faster on one thread, and two OpenMP threads spin badly on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_images(folder: Path, n: int = 4, size=(64, 64), seed: int = 0, captions: bool = True) -> Path:
    """Write n smooth random RGB images (and captions) into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"{i:03d}-img.png")
        if captions:
            (folder / f"{i:03d}-img.txt").write_text(f"thing {i}, red, blue")
    return folder


def write_template(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(model_dir, data_dir, **changes):
    from core.training.config import TrainConfig

    base = dict(model=str(model_dir), data=str(data_dir), name="tcat", steps=4, width=64, height=64,
                save_every=0, preview_every=0, validate_every=0, lr="0.01", seed=3, device="cpu")
    base.update(changes)
    return TrainConfig.from_dict(base)


def text_sensitive_copy(src: Path, dst: Path, factor: float = 20.0) -> Path:
    """A copy of a tiny diffusers model whose UNet cross-attention is scaled up, so the prompt (and a planted concept)
    visibly moves the noise prediction. Works for SD1/SD2 and SDXL folders."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    shutil.copytree(src, dst)
    unet = UNet2DConditionModel.from_pretrained(dst / "unet", local_files_only=True)
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_v.weight.mul_(factor)
                module.to_out[0].weight.mul_(factor)
    unet.save_pretrained(dst / "unet")
    return dst


def render_concept_images(pipe, folder: Path, n: int = 4, prompt: str = "a photo of <hidden>") -> Path:
    """The planted concept's training images: `pipe` (a pipeline holding the hidden embedding) renders `prompt` at
    64 px, one seed per image. The pipeline is not needed after this."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pipe(prompt, num_inference_steps=6, guidance_scale=1.0, width=64, height=64,
             generator=torch.Generator().manual_seed(i)).images[0].save(folder / f"{i}.png")
    return folder


def planted_validation_losses(model, data: Path, out: Path, **changes) -> dict[int, float]:
    """Train 2 vectors (init "dog", lr 0.1, batch 2, 16 steps, template "a photo of [name]") on the planted concept's
    images; {step: validation loss}. `changes` override the config (validate_every 4 unless given)."""
    from core.events import ListSink
    from core.training.trainer import Trainer

    template = write_template(out.parent / f"{out.name}-tpl.txt", "a photo of [name]")
    settings = dict(template=str(template), vectors=2, init_text="dog", steps=16, lr="0.1", validate_every=4,
                    batch_size=2)
    sink = ListSink()
    Trainer(tiny_config(model, data, **{**settings, **changes}), out, sink).run()
    return {e["step"]: e["val_loss"] for e in sink.of_type("validation")}
