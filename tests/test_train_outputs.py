"""A short real training run on the tiny model: every file, every event, and interop with diffusers."""

import torch
import pytest

from core.training.config import TrainConfig
from core.events import ListSink
from core.runs.lossfile import read_loss_csv
from core.training.trainer import Trainer
from train_helpers import make_images, tiny_config, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(one_thread, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-out")
    data = make_images(root / "data", n=3)
    cfg = tiny_config(tiny_model_dir, data, vectors=2, steps=4, save_every=2, preview_every=2, preview_steps=2,
                      validate_every=2, init_text="red cat", preview_negative="blurry", preview_sampler="dpmpp_2m",
                      lr="0.05:2, 0.01")
    sink = ListSink()
    summary = Trainer(cfg, root / "out", sink).run()
    return cfg, root / "out", sink, summary


def test_files_written(run):
    cfg, out, sink, summary = run
    assert summary.finished and summary.step == 4
    for rel in ["tcat.pt", "tcat.safetensors", "embeddings/tcat-2.pt", "embeddings/tcat-2.safetensors",
                "embeddings/tcat-4.pt", "embeddings/tcat-4.safetensors", "previews/tcat-0.png", "previews/tcat-2.png",
                "previews/tcat-4.png",
                "loss.csv", "config.toml", "state/latest.pt"]:
        assert (out / rel).is_file(), rel
    assert TrainConfig.from_toml(out / "config.toml") == cfg
    assert not [p for p in out.rglob("*.tmp")]


def test_loss_csv_and_events(run):
    cfg, out, sink, _ = run
    rows = read_loss_csv(out / "loss.csv")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["loss"] is None and rows[0]["val_loss"] is not None
    assert [r["lr"] for r in rows[1:]] == [0.05, 0.05, 0.01, 0.01]
    assert [r["val_loss"] is not None for r in rows] == [True, False, True, False, True]
    assert all(r["loss"] > 0 for r in rows[1:])
    types = [e["type"] for e in sink.events]
    assert types[0] == "started" and types[-1] == "finished"
    started = sink.of_type("started")[0]
    assert started["max_steps"] == 4 and started["n_images"] == 3 and started["device"] == "cpu"
    steps = sink.of_type("step")
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert {"step", "max_steps", "epoch", "loss", "lr", "it_s", "elapsed"} <= set(steps[0])
    assert [e["step"] for e in sink.of_type("checkpoint")] == [2, 4]
    assert [e["path"] for e in sink.of_type("preview")] == ["previews/tcat-0.png", "previews/tcat-2.png",
                                                            "previews/tcat-4.png"]  # step 0: the init vectors
    assert sink.of_type("finished")[0]["pt"] == "tcat.pt"


def test_outputs_load_in_diffusers(run, tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    _, out, _, _ = run
    state = torch.load(out / "state" / "latest.pt", weights_only=True)
    vectors = state["vectors"]
    assert vectors.shape == (2, 32)
    for filename in ("tcat.pt", "tcat.safetensors"):
        pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
        before, _ = pipe.encode_prompt("a photo of tcat", "cpu", 1, False)
        pipe.load_textual_inversion(str(out / filename), token="tcat")
        ids = pipe.tokenizer.convert_tokens_to_ids(["tcat", "tcat_1"])
        rows = pipe.text_encoder.get_input_embeddings().weight[ids]
        torch.testing.assert_close(rows, vectors, rtol=0, atol=1e-6)
        after, _ = pipe.encode_prompt("a photo of tcat", "cpu", 1, False)
        assert not torch.allclose(before, after)


def test_vectors_moved_and_only_vectors_trained(run, tiny_model_dir):
    from safetensors.torch import load_file

    _, out, _, _ = run
    first = next(iter(load_file(out / "embeddings/tcat-2.safetensors").values()))
    final = next(iter(load_file(out / "tcat.safetensors").values()))
    assert not torch.equal(first, final)
    assert torch.isfinite(final).all()


def test_refuses_existing_run_without_overwrite(run, tiny_model_dir):
    from core.errors import TiwizError

    cfg, out, _, _ = run
    sink = ListSink()
    with pytest.raises(TiwizError, match="already holds a training run"):
        Trainer(cfg, out, sink).run()
    assert sink.of_type("error")
