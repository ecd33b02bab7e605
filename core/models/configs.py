"""Component configs for single-file checkpoints: the bundled full-size SD1/SD2 configs, adapted to the sizes found in
the checkpoint's own tensors (so smaller models, like our tiny test model, load too). Torch-free."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from core.models.headers import (
    CLIP_PREFIX, OPENCLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "data" / "configs"
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")


def bundled_config(family: str, component: str) -> dict:
    """A bundled full-size config (`core/data/configs/<family>/<component>.json`)."""
    path = CONFIG_DIR / family / f"{component}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def configs_for(family: str, shapes: dict[str, tuple[int, ...]], prediction_type: str) -> dict[str, dict]:
    """Configs for every component: bundled ones, with architecture sizes taken from the tensor shapes."""
    unet = infer_unet_config(shapes, bundled_config(family, "unet"), family)
    if family == "sd2" and prediction_type == "v_prediction":
        unet["sample_size"] = 96  # SD2 768-v
        unet["upcast_attention"] = True
    vae = infer_vae_config(shapes, bundled_config(family, "vae"))
    vae["sample_size"] = unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
    te = infer_text_config(shapes, bundled_config(family, "text_encoder"), family)
    sched = bundled_config(family, "scheduler")
    sched["prediction_type"] = prediction_type
    configs = {"unet": unet, "vae": vae, "text_encoder": te, "scheduler": sched}
    if family == "sdxl":
        configs["text_encoder_2"] = infer_text_config(shapes, bundled_config(family, "text_encoder_2"), "sdxl-g")
        pooled = configs["text_encoder_2"]["projection_dim"]
        label = _need(shapes, UNET_PREFIX + "label_emb.0.0.weight")
        unet["projection_class_embeddings_input_dim"] = int(label[1])
        unet["addition_time_embed_dim"] = (int(label[1]) - pooled) // 6
    return configs


def _indices(shapes, pattern: str) -> set[int]:
    rx = re.compile(pattern)
    out = set()
    for key in shapes:
        m = rx.match(key)
        if m:
            out.add(int(m.group(1)))
    return out


def _need(shapes, key):
    if key not in shapes:
        raise KeyError(key)
    return shapes[key]


def infer_unet_config(shapes, base: dict, family: str) -> dict:
    p = UNET_PREFIX
    conv_in = _need(shapes, p + "input_blocks.0.0.weight")
    conv_out = _need(shapes, p + "out.2.weight")
    blocks = _indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.")
    ops = sorted(_indices(shapes, re.escape(p) + r"input_blocks\.(\d+)\.0\.op\.weight"))
    levels = len(ops) + 1
    layers = (max(blocks) - len(ops)) // levels
    channels, down = [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(int(_need(shapes, f"{p}input_blocks.{first}.0.out_layers.3.weight")[0]))
        down.append(f"{p}input_blocks.{first}.1.proj_in.weight" in shapes)
    cross = next((s[1] for k, s in shapes.items() if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    proj_in = next((s for k, s in shapes.items() if k.startswith(p) and k.endswith(".proj_in.weight")), None)
    depth = _indices(shapes, re.escape(p) + r"input_blocks\.\d+\.1\.transformer_blocks\.(\d+)\.")
    level_depth = []  # transformer blocks per level (SDXL: 0/1, 2, 10)
    for level in range(levels):
        first = 1 + level * (layers + 1)
        found = _indices(shapes, re.escape(f"{p}input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.")
        level_depth.append(max(found) + 1 if found else 1)
    cfg = copy.deepcopy(base)
    cfg.update(
        in_channels=int(conv_in[1]), out_channels=int(conv_out[0]), layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(down)],
    )
    if cross is not None:
        cfg["cross_attention_dim"] = int(cross)
    if proj_in is not None:
        cfg["use_linear_projection"] = len(proj_in) == 2
    if family == "sdxl":
        cfg["transformer_layers_per_block"] = level_depth
    elif depth and max(depth) > 0:
        cfg["transformer_layers_per_block"] = max(depth) + 1
    if channels != base["block_out_channels"]:
        # Head counts are not visible in tensors: SD1 uses 8 heads, SD2 and SDXL use 64-wide heads.
        cfg["attention_head_dim"] = 8 if family == "sd1" else [max(1, c // 64) for c in channels]
        cfg["norm_num_groups"] = _groups(channels, base.get("norm_num_groups", 32))
    return cfg


def infer_vae_config(shapes, base: dict) -> dict:
    p = VAE_PREFIX
    levels = sorted(_indices(shapes, re.escape(p) + r"encoder\.down\.(\d+)\."))
    if not levels:
        raise KeyError(p + "encoder.down.0")
    channels = [int(_need(shapes, f"{p}encoder.down.{i}.block.0.conv1.weight")[0]) for i in levels]
    layers = len(_indices(shapes, re.escape(p) + r"encoder\.down\.0\.block\.(\d+)\."))
    cfg = copy.deepcopy(base)
    cfg.update(
        in_channels=int(_need(shapes, p + "encoder.conv_in.weight")[1]),
        out_channels=int(_need(shapes, p + "decoder.conv_out.weight")[0]),
        latent_channels=int(_need(shapes, p + "post_quant_conv.weight")[0]),
        block_out_channels=channels, layers_per_block=layers,
        down_block_types=["DownEncoderBlock2D"] * len(channels), up_block_types=["UpDecoderBlock2D"] * len(channels),
    )
    if channels != base["block_out_channels"]:
        cfg["norm_num_groups"] = _groups(channels, base.get("norm_num_groups", 32))
    return cfg


def infer_text_config(shapes, base: dict, family: str) -> dict:
    """`family`: "sd1", "sd2", "sdxl" (SDXL's CLIP-L) or "sdxl-g" (SDXL's OpenCLIP bigG, every layer kept)."""
    cfg = copy.deepcopy(base)
    if family in ("sd1", "sdxl"):
        q = CLIP_PREFIX if family == "sd1" else SDXL_CLIP_PREFIX
        p = q + ("text_model." if q + "text_model.embeddings.token_embedding.weight" in shapes else "")
        vocab, hidden = _need(shapes, p + "embeddings.token_embedding.weight")
        positions = _need(shapes, p + "embeddings.position_embedding.weight")[0]
        layers = len(_indices(shapes, re.escape(p) + r"encoder\.layers\.(\d+)\."))
        inter = _need(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0]
    else:
        p = OPENCLIP_PREFIX if family == "sd2" else SDXL_OPENCLIP_PREFIX
        vocab, hidden = _need(shapes, p + "token_embedding.weight")
        positions = _need(shapes, p + "positional_embedding")[0]
        # SD2 conditions on the penultimate layer: the last resblock is never used (diffusers drops it too). SDXL
        # also takes the penultimate hidden states, but its pooled output needs the last layer: all are kept.
        layers = len(_indices(shapes, re.escape(p) + r"transformer\.resblocks\.(\d+)\.")) - (family == "sd2")
        inter = _need(shapes, p + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    if layers < 1:
        raise KeyError(p + "layers")
    if hidden != base["hidden_size"]:
        cfg["num_attention_heads"] = max(1, int(hidden) // 64)  # CLIP-L and OpenCLIP-H/bigG all use 64-wide heads
        cfg["projection_dim"] = int(hidden)
    if family == "sdxl-g":
        cfg["projection_dim"] = int(_need(shapes, p + "text_projection")[1])
    cfg.update(vocab_size=int(vocab), hidden_size=int(hidden), max_position_embeddings=int(positions),
               num_hidden_layers=layers, intermediate_size=int(inter))
    return cfg


def _groups(channels, preferred: int) -> int:
    import math

    g = preferred
    for c in channels:
        g = math.gcd(g, int(c))
    return max(1, g)
