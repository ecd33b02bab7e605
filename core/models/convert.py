"""Key conversion between the original (CompVis/A1111) single-file layout and diffusers/transformers modules.

Original → diffusers uses diffusers' own conversion helpers (the ones `from_single_file` uses); diffusers → original is
the inverse, written here for any block layout (so our tiny model round-trips too).
"""

from __future__ import annotations

import torch

from core.models.headers import (
    CLIP_PREFIX, OPENCLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX,
)

# ---------------------------------------------------------------- original -> diffusers


def unet_from_original(sd: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint(sd, config)


def vae_from_original(sd: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(sd, config)


def text_from_original(sd: dict, family: str, text_model, second: bool = False) -> dict:
    """Original text-encoder tensors as `text_model`'s state dict. SDXL: `second=False` is CLIP-L
    (`conditioner.embedders.0.transformer.*`), `second=True` the OpenCLIP bigG (`conditioner.embedders.1.model.*`,
    fused in_proj, `text_projection` transposed into a Linear)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    if family == "sd1":
        out = convert_ldm_clip_checkpoint(sd)
    elif family == "sdxl" and not second:
        out = convert_ldm_clip_checkpoint({k: v for k, v in sd.items() if k.startswith(SDXL_CLIP_PREFIX)})
    elif family == "sdxl":
        out = convert_open_clip_checkpoint(text_model, sd, prefix=SDXL_OPENCLIP_PREFIX)
    else:
        out = convert_open_clip_checkpoint(text_model, sd, prefix=OPENCLIP_PREFIX)
    # transformers >= 5.6 flattened CLIPTextModel: its keys have no `text_model.` prefix.
    flat = not hasattr(text_model, "text_model")
    return {(k.removeprefix("text_model.") if flat else k): v for k, v in out.items()}


# ---------------------------------------------------------------- diffusers -> original

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",  # SDXL text-time
}
_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _unet_prefixes(config: dict) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, original prefix, is_resnet) for every block."""
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block is not supported")
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out = []
    for i in range(n):
        for j in range(lpb):
            k = (lpb + 1) * i + j + 1
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True))
            if down_attn[i]:
                out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False))
        if i < n - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.", False))
        for j in range(lpb + 1):
            k = (lpb + 1) * i + j
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True))
            if up_attn[i]:
                out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False))
        if i < n - 1:
            k = (lpb + 1) * i + lpb
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{k}.{2 if up_attn[i] else 1}.", False))
    out.append(("mid_block.attentions.0.", "middle_block.1.", False))
    for j in range(2):
        out.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.", True))
    return out


def unet_to_original(sd: dict, config: dict) -> dict:
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in sd.items():
        new = None
        for hf, orig in _UNET_TOP.items():
            if key.startswith(hf):
                new = orig + key[len(hf):]
        for hf, orig, is_resnet in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if is_resnet:
                    for a, b in _UNET_RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                new = orig + rest
                break
        if new is None:
            raise ValueError(f"unexpected UNet tensor {key}")
        out[UNET_PREFIX + new] = value
    return out


def vae_to_original(sd: dict, config: dict) -> dict:
    n = len(config["block_out_channels"])
    out = {}
    for key, value in sd.items():
        new = key
        for part in ("encoder", "decoder"):
            new = new.replace(f"{part}.conv_norm_out.", f"{part}.norm_out.")
            new = new.replace(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")
            for j in range(2):
                new = new.replace(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.")
        for i in range(n):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new:
            for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")):
                new = new.replace(".mid.attn_1." + a, ".mid.attn_1." + b)
            if value.ndim == 2:  # the original uses 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def text_to_original(sd: dict, family: str, second: bool = False) -> dict:
    """A text encoder's state dict in the original layout: SD1 CLIP-L, SD2 OpenCLIP-H, or SDXL's CLIP-L
    (`second=False`) / OpenCLIP bigG with its text projection (`second=True`)."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}
    if family == "sd1" or (family == "sdxl" and not second):
        return {(CLIP_PREFIX if family == "sd1" else SDXL_CLIP_PREFIX) + "text_model." + k: v for k, v in sd.items()}
    p = OPENCLIP_PREFIX if family == "sd2" else SDXL_OPENCLIP_PREFIX
    projection = sd.pop("text_projection.weight", None)
    out = {}
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for k, v in sd.items():
        if k == "embeddings.token_embedding.weight":
            out[p + "token_embedding.weight"] = v
        elif k == "embeddings.position_embedding.weight":
            out[p + "positional_embedding"] = v
        elif k.startswith("final_layer_norm."):
            out[p + "ln_final." + k.split(".")[-1]] = v
        elif k.startswith("encoder.layers."):
            i, rest = k.split(".")[2], ".".join(k.split(".")[3:])
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                continue  # fused below
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                if rest.startswith(a):
                    rest = b + rest[len(a):]
            out[f"{p}transformer.resblocks.{i}.{rest}"] = v
        else:
            raise ValueError(f"unexpected text-encoder tensor {k}")
    for i in layers:
        for kind in ("weight", "bias"):
            qkv = [sd[f"encoder.layers.{i}.self_attn.{x}_proj.{kind}"] for x in ("q", "k", "v")]
            out[f"{p}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv, 0)
    if family == "sdxl":  # open_clip applies `x @ text_projection`; a Linear stores its transpose
        out[p + "text_projection"] = projection.T.contiguous()
        return out
    # SD2 conditions on the penultimate layer of a 24-layer encoder; diffusers keeps 23. Write the unused last layer
    # (zeros) so the file has the layout A1111 and ComfyUI expect, and an identity text projection.
    last = layers[-1]
    for k in [k for k in out if k.startswith(f"{p}transformer.resblocks.{last}.")]:
        out[k.replace(f"resblocks.{last}.", f"resblocks.{last + 1}.")] = torch.zeros_like(out[k])
    width = sd["embeddings.token_embedding.weight"].shape[1]
    out[p + "text_projection"] = torch.eye(width, dtype=sd["embeddings.token_embedding.weight"].dtype)
    return out
