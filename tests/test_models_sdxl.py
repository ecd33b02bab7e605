"""SDXL models: the diffusers folder, single files in the real original layout (.safetensors and .ckpt), the
v-prediction and zero-terminal-SNR markers, family detection, the bundled full-size configs, and the CLIs."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.cli import main
from core.errors import TiwizError
from core.models.find import inspect_checkpoint
from core.models.loader import load_model
from core.models.single_file import save_single_file

PROMPT = "a photo of a cat"


def _encoder_outputs(model):
    """Penultimate hidden states of both encoders and bigG's pooled projection, for a fixed prompt."""
    out = {}
    with torch.no_grad():
        for key, tok, enc in (("l", model.tokenizer, model.text_encoder), ("g", model.tokenizer_2,
                                                                            model.text_encoder_2)):
            ids = tok(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
            result = enc(ids, output_hidden_states=True)
            out[key] = result.hidden_states[-2]
            if key == "g":
                out["pooled"] = result.text_embeds
    return out


def _unet_output(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(1, model.text_encoder_2.config.projection_dim, generator=g),
             "time_ids": torch.tensor([[96.0, 80.0, 8.0, 0.0, 64.0, 64.0]])}
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), cond, added_cond_kwargs=added).sample


@pytest.fixture(scope="module")
def real_layout_file(tiny_sdxl_dir, tmp_path_factory):
    """The tiny folder converted with the key mapping real SDXL files use, without our config metadata (as a real
    A1111/ComfyUI file has none): sizes must come from the tensors."""
    folder = tmp_path_factory.mktemp("sdxl-file")
    ours = save_single_file(tiny_sdxl_dir, folder / "with-config.safetensors")
    plain = folder / "tiny-xl.safetensors"
    save_file(load_file(ours), plain)
    return plain


def test_folder_loads_offline_with_both_encoders(tiny_sdxl_dir):
    model = load_model(tiny_sdxl_dir)
    assert (model.family, model.kind, model.prediction_type) == ("sdxl", "diffusers", "epsilon")
    assert type(model.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert model.unet.config.addition_embed_type == "text_time"
    assert model.tokenizer.pad_token_id == 49407
    assert model.tokenizer_2.pad_token == "!" and model.tokenizer_2.pad_token_id == 0
    assert model.tokenizer_2(PROMPT).input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(model.modules) == 4
    info = inspect_checkpoint(tiny_sdxl_dir)
    assert (info.family, info.usable) == ("sdxl", True)


def test_real_layout_single_file_matches_the_folder(tiny_sdxl_dir, real_layout_file, tmp_path):
    keys = load_file(real_layout_file).keys()
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    assert not any(k.startswith(("text_encoder", "cond_stage_model.")) for k in keys)
    ckpt = tmp_path / "tiny-xl.ckpt"  # a torch zip holding only tensors, read with weights_only
    torch.save({"state_dict": load_file(real_layout_file)}, ckpt)

    folder = load_model(tiny_sdxl_dir)
    expected, unet = _encoder_outputs(folder), _unet_output(folder)
    for path, kind in ((real_layout_file, "safetensors"), (ckpt, "ckpt")):
        model = load_model(path)
        assert (model.family, model.kind, model.prediction_source) == ("sdxl", kind, "default")
        got = _encoder_outputs(model)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (path.name, key)
        assert torch.equal(_unet_output(model), unet)
        info = inspect_checkpoint(path)
        assert (info.family, info.usable) == ("sdxl", True), info.problem


def test_v_pred_and_ztsnr_markers_are_honoured(real_layout_file, tmp_path):
    sd = load_file(real_layout_file)
    sd["v_pred"], sd["ztsnr"] = torch.tensor([]), torch.tensor([])
    marked = tmp_path / "noob-vpred.safetensors"
    save_file(sd, marked)
    model = load_model(marked)
    assert (model.prediction_type, model.prediction_source) == ("v_prediction", "key")
    assert model.noise_scheduler.config.rescale_betas_zero_snr is True
    assert float(model.noise_scheduler.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
    assert inspect_checkpoint(marked).prediction_type == "v_prediction"
    forced = load_model(marked, prediction_type="epsilon")
    assert (forced.prediction_type, forced.prediction_source) == ("epsilon", "override")
    plain = load_model(real_layout_file, prediction_type="v_prediction")
    assert (plain.prediction_type, plain.prediction_source) == ("v_prediction", "override")
    # our own writer keeps the marker, so a v-prediction model stays one through a round trip
    again = save_single_file(plain, tmp_path / "again.safetensors")
    assert "v_pred" in load_file(again) and load_model(again).prediction_type == "v_prediction"


def test_to_single_file_command_round_trips_through_the_loader(tiny_sdxl_dir, tmp_path, capsys):
    out = tmp_path / "xl.safetensors"
    assert main(["to-single-file", str(tiny_sdxl_dir), str(out)]) == 0
    back = load_model(out)
    expected = _encoder_outputs(load_model(tiny_sdxl_dir))
    got = _encoder_outputs(back)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    capsys.readouterr()
    assert main(["models", "--only", "--json", str(tmp_path)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["family"], i["usable"]) for i in listed] == [("sdxl", True)]


def test_demo_model_family_sdxl(tmp_path, tiny_sdxl_dir):
    out = tmp_path / "xl"
    assert main(["demo-model", str(out), "--family", "sdxl"]) == 0
    for sub in ("unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        assert (out / sub).read_bytes() == (tiny_sdxl_dir / sub).read_bytes()  # same seed, same weights
    assert json.loads((out / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"


def test_bundled_full_size_configs_are_recovered_from_tensor_shapes():
    """Shapes of a real SDXL base file (built on the meta device from the bundled configs, converted with our key
    map) give back the bundled architecture."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models.configs import bundled_config, infer_text_config, infer_unet_config
    from core.models.convert import text_to_original, unet_to_original

    strip = lambda c: {k: v for k, v in c.items() if k not in ("architectures", "model_type")}  # noqa: E731
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(bundled_config("sdxl", "unet"))
        te1 = CLIPTextModel(CLIPTextConfig(**strip(bundled_config("sdxl", "text_encoder"))))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**strip(bundled_config("sdxl", "text_encoder_2"))))
    sd = unet_to_original(unet.state_dict(), unet.config)
    sd.update(text_to_original(te1.state_dict(), "sdxl"))
    sd.update(text_to_original(te2.state_dict(), "sdxl", second=True))
    sd["first_stage_model.encoder.down.0.block.0.conv1.weight"] = torch.empty(128, 128, 3, 3, device="meta")
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"] == (3840, 1280)
    assert shapes["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)

    got = infer_unet_config(shapes, bundled_config("sdxl", "unet"), "sdxl")
    for key in ("block_out_channels", "transformer_layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim", "attention_head_dim", "layers_per_block", "use_linear_projection"):
        have = got[key]
        assert (list(have) if isinstance(have, (list, tuple)) else have) == bundled_config("sdxl", "unet")[key], key
    assert got["transformer_layers_per_block"] == [1, 2, 10] and got["attention_head_dim"] == [5, 10, 20]
    g = infer_text_config(shapes, bundled_config("sdxl", "text_encoder_2"), "sdxl-g")
    assert (g["hidden_size"], g["num_hidden_layers"], g["projection_dim"], g["num_attention_heads"]) == (1280, 32, 1280, 20)
    l_ = infer_text_config(shapes, bundled_config("sdxl", "text_encoder"), "sdxl")
    assert (l_["hidden_size"], l_["num_hidden_layers"]) == (768, 12)


def test_refiners_and_incomplete_files_are_named(tmp_path):
    refiner = tmp_path / "refiner.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
               "conditioner.embedders.0.model.token_embedding.weight": torch.zeros(2, 2)}, refiner)
    info = inspect_checkpoint(refiner)
    assert info.family == "sdxl" and not info.usable and "refiner" in info.problem
    with pytest.raises(TiwizError, match="refiner"):
        load_model(refiner)
