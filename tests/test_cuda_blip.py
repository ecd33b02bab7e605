"""BLIP captioning on CUDA runs in fp16 (tiny random BLIP). Skipped without a GPU (tests/conftest.py)."""

import pytest
import torch

from core.prep.blip import BlipCaptioner
from tests.captions_photos import write_photos

pytestmark = pytest.mark.cuda


def test_blip_captions_in_fp16_on_cuda(tiny_blip_dir, tmp_path):
    images = write_photos(tmp_path / "set", ["astronaut", "coffee", "rocket"], max_side=80)
    captioner = BlipCaptioner(str(tiny_blip_dir), device="auto", batch_size=2, max_length=12)
    assert captioner.device.type == "cuda" and captioner.fp16
    assert captioner.model.dtype == torch.float16 and next(captioner.model.parameters()).is_cuda
    results = captioner.caption_results(images)
    # min_length forces words: an empty caption here means NaN/inf logits in fp16 (decoded as padding)
    assert len(results) == 3 and all(r.text.strip() for r in results), results
