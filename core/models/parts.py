"""Whether a single-file checkpoint's parts fit together, from its safetensors header alone (no tensor is read, no
torch): every part present (UNet, VAE, each text encoder, each of their layers) and every tensor's shape the one the
rest of the file implies. The model screen runs it, so a file that would fail in the worker's loader is refused
before training is set up. Torch-free."""

from __future__ import annotations

import os

from core.errors import TiwizError
from core.models.headers import (CLIP_PREFIX, OPENCLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPENCLIP_PREFIX, UNET_PREFIX,
                                 VAE_PREFIX, detect_family, read_safetensors_header)

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown family"}
PART_NAMES = {UNET_PREFIX: "UNet", VAE_PREFIX: "VAE", CLIP_PREFIX: "text encoder", OPENCLIP_PREFIX: "text encoder",
              SDXL_CLIP_PREFIX: "CLIP-L text encoder", SDXL_OPENCLIP_PREFIX: "OpenCLIP bigG text encoder"}
SHOWN = 3  # problems named in the message; the rest are counted


def single_file_problem(path: str | os.PathLike) -> str:
    """"" when the .safetensors file's parts fit its family's layout, else one sentence naming the first problems."""
    header = read_safetensors_header(path)
    family = detect_family(header.shapes.keys(), header.shapes)
    if family.family not in ("sd1", "sd2", "sdxl") or family.note:
        return ""  # not a model we would load: the family check says why
    found = part_problems(header.shapes, family.family)
    if not found:
        return ""
    more = f" (and {len(found) - SHOWN} more)" if len(found) > SHOWN else ""
    return (f"its parts do not match the standard {FAMILY_NAMES[family.family]} layout: " + "; ".join(found[:SHOWN])
            + more)


def part_problems(shapes: dict[str, tuple[int, ...]], family: str) -> list[str]:
    """Every missing tensor and wrong shape found, each as a short phrase."""
    from core.models.configs import configs_for

    try:
        configs = configs_for(family, shapes, "epsilon")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        key = exc.args[0] if exc.args else "?"
        return [f"the {_part(str(key))} tensor {key} is missing"]
    expected: dict[str, tuple[int, ...]] = {}
    widths = []
    for prefix, config, kind in _text_encoders(family, configs, shapes):
        expected.update(_clip_shapes(prefix, config) if kind == "clip" else _openclip_shapes(prefix, config, family))
        widths.append(config["hidden_size"])
    expected.update(_vae_shapes(VAE_PREFIX, configs["vae"]))
    problems = _compare(shapes, expected)
    problems += _unet_problems(shapes, context=sum(widths), latent=configs["vae"]["latent_channels"])
    return problems


def _part(key: str) -> str:
    return next((name for prefix, name in sorted(PART_NAMES.items(), key=lambda kv: -len(kv[0]))
                 if key.startswith(prefix)), "model")


def _compare(shapes: dict, expected: dict) -> list[str]:
    out = []
    for key, shape in expected.items():
        have = shapes.get(key)
        if have is None:
            out.append(f"the {_part(key)} tensor {key} is missing")
        elif _squeeze(have) != _squeeze(shape):
            out.append(f"the {_part(key)} tensor {key} has shape {tuple(have)}, expected {tuple(shape)}")
    return out


def _squeeze(shape) -> tuple:
    """1x1 convolutions and linear layers are stored either way ((c, c, 1, 1) or (c, c)): both load."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _text_encoders(family: str, configs: dict, shapes: dict):
    if family == "sd1":
        yield _clip_prefix(CLIP_PREFIX, shapes), configs["text_encoder"], "clip"
    elif family == "sd2":
        yield OPENCLIP_PREFIX, configs["text_encoder"], "openclip"
    else:
        yield _clip_prefix(SDXL_CLIP_PREFIX, shapes), configs["text_encoder"], "clip"
        yield SDXL_OPENCLIP_PREFIX, configs["text_encoder_2"], "openclip"


def _clip_prefix(prefix: str, shapes: dict) -> str:
    return prefix + ("text_model." if prefix + "text_model.embeddings.token_embedding.weight" in shapes else "")


def _linear(out: dict, key: str, n_out: int, n_in: int) -> None:
    out[key + ".weight"], out[key + ".bias"] = (n_out, n_in), (n_out,)


def _norm(out: dict, key: str, n: int) -> None:
    out[key + ".weight"], out[key + ".bias"] = (n,), (n,)


def _conv(out: dict, key: str, n_out: int, n_in: int, k: int = 3) -> None:
    out[key + ".weight"], out[key + ".bias"] = (n_out, n_in, k, k), (n_out,)


def _clip_shapes(p: str, cfg: dict) -> dict:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    out = {p + "embeddings.token_embedding.weight": (cfg["vocab_size"], h),
           p + "embeddings.position_embedding.weight": (cfg["max_position_embeddings"], h)}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"{p}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(out, layer + "self_attn." + proj, h, h)
        _norm(out, layer + "layer_norm1", h)
        _norm(out, layer + "layer_norm2", h)
        _linear(out, layer + "mlp.fc1", inter, h)
        _linear(out, layer + "mlp.fc2", h, inter)
    _norm(out, p + "final_layer_norm", h)
    return out


def _openclip_shapes(p: str, cfg: dict, family: str) -> dict:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    out = {p + "token_embedding.weight": (cfg["vocab_size"], h),
           p + "positional_embedding": (cfg["max_position_embeddings"], h)}
    layers = cfg["num_hidden_layers"] + (family == "sd2")  # SD2's last block is stored, never used
    for i in range(layers):
        block = f"{p}transformer.resblocks.{i}."
        out[block + "attn.in_proj_weight"], out[block + "attn.in_proj_bias"] = (3 * h, h), (3 * h,)
        _linear(out, block + "attn.out_proj", h, h)
        _norm(out, block + "ln_1", h)
        _norm(out, block + "ln_2", h)
        _linear(out, block + "mlp.c_fc", inter, h)
        _linear(out, block + "mlp.c_proj", h, inter)
    _norm(out, p + "ln_final", h)
    if family == "sdxl":
        out[p + "text_projection"] = (h, cfg["projection_dim"])
    return out


def _resnet(out: dict, key: str, n_in: int, n_out: int) -> None:
    _norm(out, key + "norm1", n_in)
    _conv(out, key + "conv1", n_out, n_in)
    _norm(out, key + "norm2", n_out)
    _conv(out, key + "conv2", n_out, n_out)
    if n_in != n_out:
        _conv(out, key + "nin_shortcut", n_out, n_in, 1)


def _mid(out: dict, key: str, c: int) -> None:
    _resnet(out, key + "block_1.", c, c)
    _norm(out, key + "attn_1.norm", c)
    for name in ("q", "k", "v", "proj_out"):
        _conv(out, f"{key}attn_1.{name}", c, c, 1)
    _resnet(out, key + "block_2.", c, c)


def _vae_shapes(p: str, cfg: dict) -> dict:
    channels, layers, z = cfg["block_out_channels"], cfg["layers_per_block"], cfg["latent_channels"]
    out: dict = {}
    _conv(out, p + "encoder.conv_in", channels[0], cfg["in_channels"])
    c_in = channels[0]
    for i, c in enumerate(channels):
        for j in range(layers):
            _resnet(out, f"{p}encoder.down.{i}.block.{j}.", c_in if j == 0 else c, c)
        c_in = c
        if i < len(channels) - 1:
            _conv(out, f"{p}encoder.down.{i}.downsample.conv", c, c)
    _mid(out, p + "encoder.mid.", channels[-1])
    _norm(out, p + "encoder.norm_out", channels[-1])
    _conv(out, p + "encoder.conv_out", 2 * z, channels[-1])
    _conv(out, p + "quant_conv", 2 * z, 2 * z, 1)
    _conv(out, p + "post_quant_conv", z, z, 1)
    _conv(out, p + "decoder.conv_in", channels[-1], z)
    _mid(out, p + "decoder.mid.", channels[-1])
    c_in = channels[-1]
    for i in reversed(range(len(channels))):
        for j in range(layers + 1):
            _resnet(out, f"{p}decoder.up.{i}.block.{j}.", c_in if j == 0 else channels[i], channels[i])
        c_in = channels[i]
        if i > 0:
            _conv(out, f"{p}decoder.up.{i}.upsample.conv", channels[i], channels[i])
    _norm(out, p + "decoder.norm_out", channels[0])
    _conv(out, p + "decoder.conv_out", cfg["out_channels"], channels[0])
    return out


def _unet_problems(shapes: dict, context: int, latent: int) -> list[str]:
    """The UNet's blocks checked against each other: each resnet's norms, convolutions, time embedding and shortcut
    against its own channels; each attention against its width and, for cross-attention, the text encoders' width;
    the input and output convolutions against the VAE's latent channels."""
    p = UNET_PREFIX
    expected: dict = {}
    c0, time_dim = shapes[p + "input_blocks.0.0.weight"][0], shapes[p + "time_embed.0.weight"][0]
    _conv(expected, p + "input_blocks.0.0", c0, latent)
    _linear(expected, p + "time_embed.0", time_dim, c0)
    _linear(expected, p + "time_embed.2", time_dim, time_dim)
    _norm(expected, p + "out.0", c0)
    _conv(expected, p + "out.2", latent, c0)
    for key in shapes:
        if key.startswith(p) and key.endswith(".in_layers.2.weight"):
            _unet_resnet(expected, shapes, key[: -len("in_layers.2.weight")], time_dim)
        elif key.startswith(p) and key.endswith(".attn2.to_q.weight"):
            block = key[: -len("attn2.to_q.weight")]
            width = shapes[key][0]
            for attn, kv_width in (("attn1.", width), ("attn2.", context)):
                expected[block + attn + "to_q.weight"] = (width, width)
                expected[block + attn + "to_k.weight"] = (width, kv_width)
                expected[block + attn + "to_v.weight"] = (width, kv_width)
                _linear(expected, block + attn + "to_out.0", width, width)
            for norm in ("norm1", "norm2", "norm3"):
                _norm(expected, block + norm, width)
    return _compare(shapes, expected)


def _unet_resnet(expected: dict, shapes: dict, r: str, time_dim: int) -> None:
    n_out, n_in = shapes[r + "in_layers.2.weight"][:2]
    _norm(expected, r + "in_layers.0", n_in)
    _conv(expected, r + "in_layers.2", n_out, n_in)
    _linear(expected, r + "emb_layers.1", n_out, time_dim)
    _norm(expected, r + "out_layers.0", n_out)
    _conv(expected, r + "out_layers.3", n_out, n_out)
    if n_in != n_out:
        _conv(expected, r + "skip_connection", n_out, n_in, 1)



def text_widths(path: str | os.PathLike, family: str) -> tuple[int, ...]:
    """Each text encoder's width (SDXL: CLIP-L's, then bigG's) from a .safetensors header or a diffusers folder's
    configs; () when the file does not say without loading it (a .ckpt)."""
    import json
    from pathlib import Path

    from core.models.configs import configs_for

    path = Path(path)
    names = ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)
    try:
        if path.is_dir():
            return tuple(int(json.loads((path / name / "config.json").read_text(encoding="utf-8"))["hidden_size"])
                         for name in names)
        if path.suffix.lower() == ".safetensors":
            configs = configs_for(family, read_safetensors_header(path).shapes, "epsilon")
            return tuple(int(configs[name]["hidden_size"]) for name in names)
    except (OSError, ValueError, KeyError, TypeError, IndexError, TiwizError):
        pass
    return ()
