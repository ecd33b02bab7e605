"""Embedding kinds (issue 20): the preview prompts of each kind, the negative kind's pair rendered from one seed on the
tiny model, and how the finish screen says to use each kind."""

from __future__ import annotations

import numpy as np
import pytest

from core.training.kinds import PreviewPrompt, preview_line, preview_prompts, render_preview, usage_text, without_name


def test_preview_lines_per_kind():
    first = "an artwork of a cat in the style of [name]"
    assert preview_line("subject", "", first, "a cat", tags=False) == first
    assert preview_line("subject", "[name] on a beach", first, "a cat", tags=False) == "[name] on a beach"
    assert preview_line("style", "", "[name], 1girl, solo", "1girl, solo", tags=True) == "1girl, solo, [name]"
    assert preview_line("style", "", "a photo of [name], a cat", "a cat", tags=False) == \
        "an artwork of a cat in the style of [name]"
    assert preview_line("negative", "", "[name], 1girl, solo", "1girl, solo", tags=True) == "1girl, solo"


def test_negative_previews_are_a_pair_with_the_embedding_in_the_negative_prompt():
    pair = preview_prompts("negative", "[name], 1girl, solo", "<zxq>", "lowres", "zxqneg")
    assert pair == [PreviewPrompt("1girl, solo", "lowres", "without"),
                    PreviewPrompt("1girl, solo", "lowres, <zxq>", "zxqneg in the negative")]
    assert preview_prompts("negative", "1girl", "<zxq>", "", "n")[1].negative == "<zxq>"
    assert preview_prompts("subject", "[name] on a beach", "<zxq>", "", "n") == [
        PreviewPrompt("<zxq> on a beach", "", "")]
    assert preview_prompts("style", "a castle", "<zxq>", "", "n")[0].prompt == "a castle, <zxq>"
    assert without_name("[name], 1girl, , solo") == "1girl, solo"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    import torch

    from core.models.loader import load_model

    torch.set_num_threads(1)
    model = load_model(tiny_model_dir, device="cpu")
    pipe = model.make_pipeline("euler_a")
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt, negative):
        generator = torch.Generator().manual_seed(7)
        return pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=3, guidance_scale=7.0,
                    generator=generator, width=64, height=64).images[0]
    return generate


def test_pair_rendered_from_one_seed_on_the_tiny_model(tiny_pipe):
    prompts = preview_prompts("negative", "[name], a red square", "blue", "", "zxqneg")
    sheet = np.asarray(render_preview(tiny_pipe, prompts).convert("RGB")).astype(int)
    assert sheet.shape == (64 + 18, 64 * 2 + 8, 3)  # two 64 px images, a gap, a label row
    without, with_it = sheet[:64, :64], sheet[:64, 72:]
    again = np.asarray(tiny_pipe("a red square", None)).astype(int)
    assert np.array_equal(without, again)  # the same seed: the left image is the prompt alone
    assert np.abs(without - with_it).mean() > 1  # the embedding in the negative prompt changes the image
    single = render_preview(tiny_pipe, preview_prompts("subject", "[name], a red square", "blue", "", "x"))
    assert single.size == (64, 64)


def test_usage_text_per_kind():
    negative = usage_text("negative", "zxqneg")
    assert "NEGATIVE prompt" in negative and "A1111/Forge" in negative
    assert "embedding:zxqneg" in negative and "CLIPTextEncode" in negative and "negative input" in negative
    assert "embedding:zxq" in usage_text("subject", "zxq") and "positive" in usage_text("style", "zxq")
