"""SDXL training on the tiny SDXL-shaped model, through the real trainer: the written file in diffusers'
StableDiffusionXLPipeline, size conditioning (time_ids) of non-square images, learning a planted concept, exact
resume after kill -9, the v-prediction marker, and cross-family refusals."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import (make_images, one_thread, planted_validation_losses, render_concept_images,  # noqa: F401
                           text_sensitive_copy, tiny_config)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of zxqstyle on a table"


def _pipe(model_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_sdxl_file(pipe, path, token):
    """The two calls diffusers' docs give for SDXL embeddings."""
    state = load_file(path)
    pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    return state


@pytest.fixture(scope="module")
def trained(tiny_sdxl_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("sdxl-run")
    data = make_images(base / "data", n=2, size=(96, 64))
    sink = ListSink()
    cfg = tiny_config(tiny_sdxl_dir, data, vectors=2, init_text="red cat", steps=4, save_every=2, lr="0.05")
    summary = Trainer(cfg, base / "out", sink).run()
    return base / "out", summary, sink


def test_run_writes_clip_l_and_clip_g_files_and_no_pt(trained):
    out, summary, sink = trained
    assert summary.finished and summary.pt == "" and summary.safetensors == "tcat.safetensors"
    state = load_file(out / "tcat.safetensors")
    assert sorted(state) == ["clip_g", "clip_l"]
    assert state["clip_l"].shape == (2, 32) and state["clip_g"].shape == (2, 64)  # the tiny CLIP-L / bigG widths
    vectors = torch.load(out / "state" / "latest.pt", weights_only=True)["vectors"]
    assert torch.equal(torch.cat([state["clip_l"], state["clip_g"]], 1), vectors)
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == ["tcat-2.safetensors", "tcat-4.safetensors"]
    assert not list(out.rglob("*.pt")) or [p.name for p in out.rglob("*.pt")] == ["latest.pt"]
    assert [e["pt"] for e in sink.of_type("checkpoint")] == ["", ""]
    assert any("no .pt format for SDXL" in e["message"] for e in sink.of_type("warning"))
    assert sink.of_type("started")[0]["family"] == "sdxl"


def test_file_loads_in_diffusers_and_reproduces_the_training_conditioning(trained, tiny_sdxl_dir):
    from core.models.loader import load_model
    from core.training.conditioning import encode_prompts, encoder_slots
    from core.training.splice import PLACEHOLDER, VectorSplice

    out, _, _ = trained
    pipe = _pipe(tiny_sdxl_dir)
    with torch.no_grad():
        before, _, before_pooled, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    state = _load_sdxl_file(pipe, out / "tcat.safetensors", "zxqstyle")
    for tok, enc, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"), (pipe.tokenizer_2, pipe.text_encoder_2,
                                                                          "clip_g")):
        ids = tok.convert_tokens_to_ids(["zxqstyle", "zxqstyle_1"])
        assert torch.equal(enc.get_input_embeddings().weight.detach()[ids], state[key])
    with torch.no_grad():
        after, _, after_pooled, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False)
    assert after.shape == before.shape == (1, 77, 96) and not torch.allclose(after, before, atol=1e-4)
    assert not torch.allclose(after_pooled, before_pooled, atol=1e-4)

    # the same prompt through the trainer's own conditioning, with the vectors spliced in, gives the same tensors
    model = load_model(tiny_sdxl_dir)
    vectors = torch.cat([state["clip_l"], state["clip_g"]], 1)
    tokens = [PLACEHOLDER.format(i) for i in range(2)]
    for slot in encoder_slots(model):
        slot.tokenizer.add_tokens(tokens)
        VectorSplice(slot.encoder, slot.tokenizer.convert_tokens_to_ids(tokens), vectors, columns=slot.columns)
    with torch.no_grad():
        cond, added = encode_prompts(model, [PROMPT.replace("zxqstyle", " ".join(tokens))], "cpu",
                                     torch.zeros(1, 6))
    torch.testing.assert_close(cond, after, rtol=0, atol=1e-5)
    torch.testing.assert_close(added["text_embeds"], after_pooled, rtol=0, atol=1e-5)


def test_time_ids_carry_original_size_and_crop_of_non_square_images(tmp_path):
    from diffusers import AutoencoderKL

    from core.models.builtin import TINY_VAE
    from core.prep.options import PreprocessOptions
    from core.prep.preprocess import run_preprocess
    from core.training.dataset import build_dataset

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE)
    data = tmp_path / "data"
    make_images(data, n=1, size=(96, 64))  # wide: scaled to 96x64 (already), centre crop starts at x = 16
    make_images(tmp_path / "tall", n=1, size=(40, 80), seed=1)  # tall: scaled to 64x128, crop starts at y = 32
    shutil.copy(tmp_path / "tall" / "000-img.png", data / "001-tall.png")
    ds = build_dataset(data, vae=vae, width=64, height=64, resize="crop", latent_sampling="deterministic", seed=0)
    assert ds.time_ids([0, 1]).tolist() == [[64.0, 96.0, 0.0, 16.0, 64.0, 64.0], [80.0, 40.0, 32.0, 0.0, 64.0, 64.0]]

    # a folder written by `tiwiz preprocess`: the images are crops already; its report.json keeps the originals
    src = tmp_path / "src"
    make_images(src, n=1, size=(192, 96), captions=False)
    prepared = tmp_path / "prepared"
    run_preprocess(src, prepared, PreprocessOptions(width=64, height=64), workers=1)
    ds = build_dataset(prepared, vae=vae, width=64, height=64, resize="crop", latent_sampling="deterministic",
                       seed=0)
    assert ds.time_ids([0]).tolist() == [[96.0, 192.0, 0.0, 32.0, 64.0, 64.0]]  # 192x96 -> 128x64, crop at x = 32



@pytest.mark.slow
def test_validation_loss_drops_on_planted_concept(tiny_sdxl_dir, tmp_path):
    model = text_sensitive_copy(tiny_sdxl_dir, tmp_path / "model")
    pipe = _pipe(model)
    g = torch.Generator().manual_seed(123)
    hidden = {"clip_l": torch.randn(2, 32, generator=g) * 1.5, "clip_g": torch.randn(2, 64, generator=g) * 1.5}
    save_file(hidden, tmp_path / "hidden.safetensors")
    _load_sdxl_file(pipe, tmp_path / "hidden.safetensors", "<hidden>")
    data = render_concept_images(pipe, tmp_path / "data")
    del pipe
    losses = planted_validation_losses(model, data, tmp_path / "out")
    assert list(losses) == [0, 4, 8, 12, 16]
    vals = list(losses.values())
    assert vals[-1] < 0.98 * vals[0], vals
    assert vals[-1] < min(vals[:-1]), vals


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_uninterrupted_vectors(tiny_sdxl_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3, size=(80, 64))
    options = dict(steps=12, save_every=2, latent_sampling="random", shuffle_tags=True, lr="0.05", vectors=2)
    straight = tmp_path / "straight"
    Trainer(tiny_config(tiny_sdxl_dir, data, **options), straight, ListSink()).run()

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "core.cli", "train", "--foreground", "--model", str(tiny_sdxl_dir), "--data",
           str(data), "--name", "tcat", "--width", "64", "--height", "64", "--preview-every", "0", "--validate-every",
           "0", "--seed", "3", "--device", "cpu", "--output", str(killed), "--steps", "12", "--save-every", "2",
           "--latent-sampling", "random", "--shuffle-tags", "--lr", "0.05", "--vectors", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest, deadline, step = killed / "state" / "latest.pt", time.monotonic() + 240, 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    step = torch.load(latest, weights_only=True)["step"]
    assert 2 <= step < 12
    summary = Trainer(tiny_config(tiny_sdxl_dir, data, **options), killed, ListSink()).run(resume=True)
    assert summary.finished and summary.step == 12
    for name in ("tcat.safetensors", "embeddings/tcat-12.safetensors"):
        a, b = load_file(straight / name), load_file(killed / name)
        for key in ("clip_l", "clip_g"):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)


def test_v_prediction_marker_is_honoured_and_can_be_forced(tiny_sdxl_dir, tmp_path):
    from core.models.single_file import save_single_file

    ours = save_single_file(tiny_sdxl_dir, tmp_path / "ours.safetensors")
    sd = load_file(ours)
    sd["v_pred"] = torch.tensor([])
    marked = tmp_path / "vpred-xl.safetensors"
    save_file(sd, marked)  # a real-layout file with ComfyUI's marker and no config metadata
    data = make_images(tmp_path / "data", n=1)
    trainer = Trainer(tiny_config(marked, data, steps=1), tmp_path / "out", ListSink())
    trainer.run()
    assert (trainer.session.model.prediction_type, trainer.session.model.prediction_source) == ("v_prediction", "key")
    forced = Trainer(tiny_config(marked, data, steps=1, prediction_type="epsilon"), tmp_path / "out2", ListSink())
    forced.run()
    assert (forced.session.model.prediction_type, forced.session.model.prediction_source) == ("epsilon", "override")


def test_embeddings_of_the_other_family_are_refused_naming_both(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=1)
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)}, xl)
    sd1 = tmp_path / "sd1.safetensors"
    save_file({"thing": torch.zeros(1, 32)}, sd1)
    with pytest.raises(TiwizError, match="SDXL embedding.*this model is SD1.x"):
        Trainer(tiny_config(tiny_model_dir, data, init_from=str(xl)), tmp_path / "a", ListSink()).run()
    with pytest.raises(TiwizError, match="SD1/SD2-style embedding.*this model is SDXL"):
        Trainer(tiny_config(tiny_sdxl_dir, data, init_from=str(sd1)), tmp_path / "b", ListSink()).run()
    # and an SDXL file continues an SDXL run
    trainer = Trainer(tiny_config(tiny_sdxl_dir, data, init_from=str(xl), steps=1, lr="0"), tmp_path / "c",
                      ListSink())
    trainer.run()
    assert torch.equal(trainer.session.vectors.detach(), torch.zeros(1, 96))


@pytest.mark.slow
def test_cli_train_attach_resume_and_runs_on_an_sdxl_run(tiny_sdxl_dir, tmp_path):
    """`tiwiz train` (detached worker + attach), `tiwiz resume` and `tiwiz runs` on an SDXL run."""
    import json

    data = make_images(tmp_path / "data", n=2)
    root = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def tiwiz(*args):
        return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=300)

    out = root / "xl"
    first = tiwiz("train", "--model", str(tiny_sdxl_dir), "--data", str(data), "--name", "zxqxl", "--steps", "2",
                  "--width", "64", "--height", "64", "--save-every", "2", "--preview-every", "2", "--preview-steps",
                  "2", "--device", "cpu", "--output", str(out))
    assert first.returncode == 0, first.stderr
    assert "zxqxl.safetensors" in first.stdout and "zxqxl.pt" not in first.stdout
    (started,) = [line for line in first.stdout.splitlines() if line.startswith("started at step")]
    assert started.endswith("(SDXL)"), started  # the family as users name it
    assert (out / "previews" / "zxqxl-2.png").is_file()  # rendered by StableDiffusionXLPipeline with live vectors
    second = tiwiz("resume", str(out), "--steps", "4")
    assert second.returncode == 0, second.stderr
    assert sorted(load_file(out / "zxqxl.safetensors")) == ["clip_g", "clip_l"]
    assert (out / "embeddings" / "zxqxl-4.safetensors").is_file() and not list(out.glob("*.pt"))
    listed = tiwiz("runs", "--root", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert run["step"] == 4, run


def test_gradient_checkpointing_option_gives_the_same_training(tiny_sdxl_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    results = {}
    for mode in ("on", "off"):
        trainer = Trainer(tiny_config(tiny_sdxl_dir, data, steps=2, lr="0.05", gradient_checkpointing=mode),
                          tmp_path / mode, ListSink())
        trainer.run()
        assert trainer.session.model.unet.is_gradient_checkpointing == (mode == "on")
        results[mode] = trainer.session.vectors.detach().clone()
    torch.testing.assert_close(results["on"], results["off"], rtol=0, atol=1e-6)


def test_latents_are_never_encoded_in_fp16(tmp_path):
    """An fp16 VAE (SDXL's overflows in fp16) encodes in fp32: the latents equal those of its fp32 copy."""
    from diffusers import AutoencoderKL

    from core.models.builtin import TINY_VAE
    from core.training.dataset import build_dataset

    torch.manual_seed(0)
    half = AutoencoderKL(**TINY_VAE).half()
    data = make_images(tmp_path / "data", n=2)
    got = build_dataset(data, vae=half, width=64, height=64, resize="crop", latent_sampling="deterministic", seed=0)
    assert next(half.parameters()).dtype == torch.float16  # the caller's module is left as it was
    want = build_dataset(data, vae=_as_fp32(half), width=64, height=64, resize="crop",
                         latent_sampling="deterministic", seed=0)
    for a, b in zip(got.items, want.items):
        assert a.latent.dtype == torch.float32 and torch.equal(a.latent, b.latent)


def _as_fp32(module):
    import copy

    return copy.deepcopy(module).float()
