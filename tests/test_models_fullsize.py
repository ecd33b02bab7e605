"""The full-size SD1.5 / SD2.x layouts, on the meta device (shapes only, no weights): our original-layout keys are
the ones real checkpoints have, they convert back completely, and the configs inferred from their shapes are the
bundled full-size ones."""

import pytest
import torch

from core.models.configs import bundled_config, configs_for
from core.models.convert import (
    text_from_original, text_to_original, unet_from_original, unet_to_original, vae_from_original, vae_to_original,
)
from core.models.headers import detect_family


def _meta_modules(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    te = {k: v for k, v in bundled_config(family, "text_encoder").items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        return (UNet2DConditionModel.from_config(bundled_config(family, "unet")),
                AutoencoderKL.from_config(bundled_config(family, "vae")), CLIPTextModel(CLIPTextConfig(**te)))


@pytest.mark.parametrize("family,diffusers_type", [("sd1", "v1"), ("sd2", "v2")])
def test_full_size_layout_matches_real_checkpoints(family, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    unet, vae, te = _meta_modules(family)
    sd = {}
    sd.update(unet_to_original(unet.state_dict(), unet.config))
    sd.update(vae_to_original(vae.state_dict(), vae.config))
    sd.update(text_to_original(te.state_dict(), family))
    assert infer_diffusers_model_type(sd) == diffusers_type  # diffusers' own detector recognises our layout
    # well-known keys of the released checkpoints
    assert "model.diffusion_model.output_blocks.11.0.skip_connection.weight" in sd
    assert sd["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == (2 if family == "sd2" else 4)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    if family == "sd1":
        assert sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape == (49408, 768)
    else:
        assert sd["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
        assert sd["cond_stage_model.model.positional_embedding"].shape == (77, 1024)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert detect_family(sd.keys(), shapes).family == family
    configs = configs_for(family, shapes, "epsilon")
    for component in ("unet", "vae", "text_encoder"):
        assert configs[component] == bundled_config(family, component), component
    # and back: every module tensor is found, with the right shape
    for module, converted in ((unet, unet_from_original(sd, configs["unet"])),
                              (vae, vae_from_original(sd, configs["vae"])),
                              (te, text_from_original(sd, family, te))):
        expected = module.state_dict()
        assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in expected.items())
