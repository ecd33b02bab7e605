"""Loading diffusers folders and single-file checkpoints offline, through the same code path a user's model takes."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import TiwizError
from core.models.loaded_model import SAMPLERS
from core.models.loader import load_model
from core.models.single_file import save_single_file
from tiny_sd2 import write_tiny_sd2_model

PROMPT = "a photo of a cat"


def _outputs(model, seed=0):
    """Text-encoder hidden states, a UNet prediction and a VAE decode/encode on fixed inputs."""
    g = torch.Generator().manual_seed(seed)
    ids = model.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    latents = torch.randn(1, 4, 8, 8, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        text = model.text_encoder(ids)[0]
        unet = model.unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample
        decoded = model.vae.decode(latents).sample
        encoded = model.vae.encode(image).latent_dist.mean
    return {"text": text, "unet": unet, "decoded": decoded, "encoded": encoded}


def _assert_same_outputs(a, b):
    oa, ob = _outputs(a), _outputs(b)
    for key in oa:
        assert torch.equal(oa[key], ob[key]), key


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    return write_tiny_sd2_model(tmp_path_factory.mktemp("sd2") / "tiny-sd2", seed=3)


@pytest.fixture(scope="module")
def sd1_file(tiny_model_dir, tmp_path_factory):
    return save_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def test_folder_loads_offline_with_its_parts(tiny_model_dir):
    model = load_model(tiny_model_dir)
    assert (model.family, model.prediction_type, model.kind) == ("sd1", "epsilon", "diffusers")
    assert model.name == "model" and model.path == tiny_model_dir
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
    assert model.tokenizer(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert model.device == torch.device("cpu")
    assert next(model.unet.parameters()).dtype == torch.float32
    assert len(model.short_hash) == 10 and model.short_hash == load_model(tiny_model_dir).short_hash


def test_pipelines_share_modules_and_generate(tiny_model_dir):
    model = load_model(tiny_model_dir)
    expected = {"euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
                "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler"}
    for sampler in SAMPLERS:
        pipe = model.make_pipeline(sampler)
        assert pipe.unet is model.unet and pipe.text_encoder is model.text_encoder and pipe.vae is model.vae
        assert pipe.safety_checker is None
        if sampler in expected:
            assert type(pipe.scheduler).__name__ == expected[sampler]
    image = model.make_pipeline("euler_a")(PROMPT, num_inference_steps=2, height=64, width=64,
                                           generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    with pytest.raises(TiwizError, match="unknown sampler"):
        model.make_pipeline("plms")


def test_sd2_folder_reads_v_prediction_and_openclip_padding(sd2_dir, tmp_path):
    model = load_model(sd2_dir)
    assert (model.family, model.prediction_type) == ("sd2", "v_prediction")
    assert model.tokenizer.pad_token == "!" and model.tokenizer.pad_token_id == 0
    assert model.text_encoder.config.hidden_act == "gelu"
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    eps = load_model(write_tiny_sd2_model(tmp_path / "eps", seed=3, prediction_type="epsilon"))
    assert (eps.family, eps.prediction_type) == ("sd2", "epsilon")
    forced = load_model(sd2_dir, prediction_type="epsilon")
    assert (forced.prediction_type, forced.prediction_source) == ("epsilon", "override")


@pytest.mark.parametrize("family,suffix", [("sd1", ".safetensors"), ("sd1", ".ckpt"), ("sd2", ".safetensors")])
def test_single_file_round_trip_gives_identical_outputs(family, suffix, tiny_model_dir, sd2_dir, tmp_path):
    folder = tiny_model_dir if family == "sd1" else sd2_dir
    path = save_single_file(folder, tmp_path / f"model{suffix}")
    if suffix == ".ckpt":  # a plain torch zip that weights_only accepts
        obj = torch.load(path, weights_only=True)
        assert any(k.startswith("model.diffusion_model.") for k in obj["state_dict"])
    a, b = load_model(folder), load_model(path)
    assert (b.family, b.kind, b.name) == (family, "ckpt" if suffix == ".ckpt" else "safetensors", path.name)
    assert b.prediction_type == a.prediction_type
    assert b.tokenizer.pad_token_id == a.tokenizer.pad_token_id
    _assert_same_outputs(a, b)
    assert b.short_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_single_file_uses_original_key_layout(sd1_file, sd2_dir, tmp_path):
    keys = set(load_file(sd1_file))
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert key in keys, key
    sd2 = load_file(save_single_file(sd2_dir, tmp_path / "sd2.safetensors"))
    # 3 used layers + the unused final layer that SD2's penultimate-layer conditioning skips
    assert "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight" in sd2
    assert sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"].shape == (96, 32)


def test_sizes_come_from_tensors_when_there_is_no_metadata(sd1_file, tiny_model_dir, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(sd1_file), bare)  # same tensors, no tiwiz_config metadata
    a, b = load_model(tiny_model_dir), load_model(bare)
    assert (b.family, b.prediction_type, b.prediction_source) == ("sd1", "epsilon", "default")
    assert b.unet.config.block_out_channels == (32, 64) or list(b.unet.config.block_out_channels) == [32, 64]
    assert b.unet.config.layers_per_block == 1 and b.unet.config.cross_attention_dim == 32
    assert b.text_encoder.config.num_hidden_layers == 2 and b.text_encoder.config.hidden_size == 32
    oa, ob = _outputs(a), _outputs(b)
    # head counts are not visible in tensors: the text encoder has the same weights but may split heads differently
    sa, sb = a.text_encoder.state_dict(), b.text_encoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        unet_b = b.unet(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500]),
                        encoder_hidden_states=oa["text"]).sample
    assert torch.equal(unet_b, oa["unet"])
    assert torch.equal(oa["decoded"], ob["decoded"])


def test_sd2_without_metadata_guesses_and_accepts_an_override(sd2_dir, tmp_path):
    bare = tmp_path / "sd2-bare.safetensors"
    save_file(load_file(save_single_file(sd2_dir, tmp_path / "sd2.safetensors")), bare)
    guessed = load_model(bare)
    assert guessed.family == "sd2" and guessed.prediction_source == "heuristic"
    assert guessed.text_encoder.config.num_hidden_layers == 3  # the unused last layer is dropped
    assert guessed.tokenizer.pad_token_id == 0
    forced = load_model(bare, prediction_type="v_prediction")
    assert (forced.prediction_type, forced.prediction_source) == ("v_prediction", "override")
    assert forced.unet.config.sample_size == 96  # SD2 768-v
    bare.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')  # A1111's sidecar config
    sidecar = load_model(bare)
    assert (sidecar.prediction_type, sidecar.prediction_source) == ("v_prediction", "sidecar")
    bare.with_suffix(".yaml").unlink()
    sd = load_file(bare)
    sd["v_pred"] = torch.tensor([])  # ComfyUI's marker for v-prediction checkpoints
    save_file(sd, tmp_path / "marked.safetensors")
    marked = load_model(tmp_path / "marked.safetensors")
    assert (marked.prediction_type, marked.prediction_source) == ("v_prediction", "key")
    with pytest.raises(TiwizError, match="prediction type"):
        load_model(bare, prediction_type="sample")


def test_fp16_single_file_loads_as_fp32(tiny_model_dir, tmp_path):
    half = save_single_file(tiny_model_dir, tmp_path / "half.safetensors", half=True)
    assert next(iter(load_file(half).values())).dtype == torch.float16
    model = load_model(half)
    assert {p.dtype for p in model.unet.parameters()} == {torch.float32}
    assert load_model(half, dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_save_single_file_refuses_to_overwrite_and_bad_suffix(sd1_file, tiny_model_dir, tmp_path):
    with pytest.raises(TiwizError, match="already exists"):
        save_single_file(tiny_model_dir, sd1_file)
    with pytest.raises(TiwizError, match=r"\.safetensors or \.ckpt"):
        save_single_file(tiny_model_dir, tmp_path / "x.bin")


# ---------------------------------------------------------------- errors name the file and say what is wrong


def _err(path, **kw) -> str:
    with pytest.raises(TiwizError) as info:
        load_model(path, **kw)
    message = str(info.value)
    assert str(path) in message
    return message


def test_corrupt_and_truncated_files(sd1_file, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model at all" * 100)
    assert "not a valid safetensors file" in _err(garbage)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert "empty or truncated" in _err(empty)
    data = sd1_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(cut)
    ckpt = tmp_path / "cut.ckpt"
    torch.save({"state_dict": load_file(sd1_file)}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100_000])
    assert "corrupt or truncated" in _err(ckpt)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 1000)
    assert "corrupt or truncated" in _err(junk)


def test_unknown_and_unsupported_files(sd1_file, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert "not a model" in _err(other)
    assert "no such file" in _err(tmp_path / "missing.safetensors")
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, lora)
    assert "a LoRA" in _err(lora)
    emb = tmp_path / "emb.ckpt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 768)}, "name": "x"}, emb)
    assert "embedding" in _err(emb)
    xl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, xl)
    assert "incomplete SDXL checkpoint" in _err(xl)
    sd = load_file(sd1_file)
    del sd["model.diffusion_model.out.2.weight"]
    broken = tmp_path / "incomplete.safetensors"
    save_file(sd, broken)
    assert "missing" in _err(broken)


def test_ckpt_with_python_objects_is_refused(sd1_file, tmp_path):
    import argparse

    bad = tmp_path / "objects.ckpt"
    torch.save({"state_dict": load_file(sd1_file), "hparams": argparse.Namespace(lr=1)}, bad)
    assert "refused" in _err(bad)


def test_broken_folders(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x01\x02")
    assert "cannot load" in _err(folder)
    shutil.rmtree(folder / "vae")
    assert "no vae/ folder" in _err(folder)
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline",
                                                     "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    assert "no unet/ folder" in _err(xl)
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                                                     "text_encoder": [None, None],
                                                     "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    assert "SDXL refiner" in _err(xl)
