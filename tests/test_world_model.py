"""The shipped shapes-world model: an ordinary SD1-shaped diffusers folder that our trainer really learns on."""

import json
from pathlib import Path

import pytest

from core.world import demo_job as demo

from core.world import shapes
from core.models import builtin as model_demo


@pytest.fixture(scope="module")
def world_model_dir(tmp_path_factory) -> Path:
    return model_demo.write_demo_model(tmp_path_factory.mktemp("world") / "model")


def test_world_model_is_small_and_complete():
    total = sum(p.stat().st_size for p in model_demo.WORLD_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024
    for name in model_demo.WORLD_MODEL_FILES:
        assert (model_demo.WORLD_MODEL_DIR / name).is_file(), name


def test_write_demo_model_loads_through_our_loader(world_model_dir):
    import torch

    from core.models.loader import load_model

    model = load_model(world_model_dir, device="cpu")
    assert model.family == "sd1" and model.prediction_type == "epsilon"
    assert model.tokenizer("a red circle").input_ids[:2] == [49406, 320]
    sched = json.loads((world_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    # shipped weights, not the random ones
    random_dir = model_demo.write_random_demo_model(world_model_dir.parent / "random", seed=0)
    from safetensors.torch import load_file

    a = load_file(str(world_model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(random_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)


def test_random_flag_writes_the_random_model(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("random")
    out = model_demo.write_demo_model(tmp_path / "r", seed=3, random=True)
    again = model_demo.write_random_demo_model(tmp_path / "r2", seed=3)
    a = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (again / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_missing_weights_give_a_clear_error(tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("missing")
    from core.errors import TiwizError

    monkeypatch.setattr(model_demo, "WORLD_MODEL_DIR", tmp_path / "nowhere")
    with pytest.raises(TiwizError, match="--random"):
        model_demo.write_demo_model(tmp_path / "m")


def test_world_model_follows_the_prompted_colours(world_model_dir):
    """A small version of bench/world_quality.py (its first 10 prompts and seeds): shape and background colours follow
    the prompt (chance is about 1 in 50 for both). The full figures are in bench/RESULTS.md."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from world_quality import world_prompts

    cases = world_prompts(10)
    pipe = demo.load_pipeline(world_model_dir)
    images = demo.generate(pipe, [shapes.caption_for(*c) for c in cases], list(range(10)), steps=25, cfg=5.0)
    got = [shapes.dominant_colors(im) for im in images]
    assert sum(g == (c[0], c[2]) for g, c in zip(got, cases)) >= 8, got


def test_prepare_demo_writes_model_images_and_a_valid_config(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prep")
    from core.training.config import TrainConfig

    prep = demo.prepare_demo(tmp_path / "demo", steps=50)
    pngs = sorted(Path(prep["data_dir"]).glob("*.png"))
    assert 12 <= len(pngs) <= 20
    assert all(p.with_suffix(".txt").read_text().strip() == demo.DEMO_CAPTION for p in pngs)
    config = TrainConfig.from_dict(prep["config"])
    assert config.steps == 50 and config.width == 64 and Path(config.model) == prep["model_dir"]
    assert (Path(config.template)).read_text().strip() == "[name]"


def test_textual_inversion_learns_on_the_shipped_model(tmp_path_factory):
    """CI-sized: ~100 steps on a handful of concept images through the real trainer; the fixed-seed validation loss
    (fixed images, noise and timesteps) must drop clearly below the init embedding's."""
    tmp_path = tmp_path_factory.mktemp("ti")
    from core.training.config import TrainConfig
    from core.events import ListSink
    from core.training.trainer import Trainer

    prep = demo.prepare_demo(tmp_path / "demo", steps=100, n_images=6)
    # plain MSE and A1111's default lr: the fastest visible drop of the (plain) validation loss
    cfg = dict(prep["config"], preview_every=0, save_every=0, validate_every=100, batch_size=2, lr="0.005",
               loss_weighting="none")
    sink = ListSink()
    Trainer(TrainConfig.from_dict(cfg), Path(cfg["output"]), sink).run()
    vals = [e["val_loss"] for e in sink.events if e["type"] == "validation"]
    assert len(vals) == 2
    assert vals[-1] < 0.9 * vals[0], vals  # measured: 0.0437 -> 0.0368 (-16%)
    assert (Path(cfg["output"]) / "demo-heart.safetensors").is_file()


@pytest.mark.slow  # the shipped demo's full 300 steps and its before/after render (~50 s on a loaded 2-core machine)
def test_demo_embedding_draws_closer_to_the_concept(tmp_path_factory):
    """The demo as shipped (seed 0, its config, 16 images): images generated with the learned embedding are less than
    half as far from the concept's images (colour histograms) as those generated with the init embedding."""
    tmp_path = tmp_path_factory.mktemp("demo")
    from core.training.config import TrainConfig
    from core.events import ListSink
    from core.training.trainer import Trainer

    prep = demo.prepare_demo(tmp_path / "demo")
    cfg = dict(prep["config"], preview_every=0, save_every=0)
    Trainer(TrainConfig.from_dict(cfg), Path(cfg["output"]), ListSink()).run()
    result = demo.before_after(prep["model_dir"], prep["data_dir"], Path(cfg["output"]) / "demo-heart.safetensors",
                               tmp_path / "grid.png")
    assert result["ratio"] < 0.5, result  # measured: 0.976 -> 0.193 (0.20)
    assert (tmp_path / "grid.png").stat().st_size > 0
