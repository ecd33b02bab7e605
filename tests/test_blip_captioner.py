import subprocess
import sys
from pathlib import Path

import pytest

from core.atomic import atomic_write_text
from core.prep.blip import BlipCaptioner, caption_problem
from core.prep.captions import CaptionSet, apply_existing_caption
from core.errors import TiwizError
from core.events import ListSink
from tests.captions_photos import write_photos
from tests.tiny_blip import write_tiny_blip

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_blip_captions_are_written_for_real_photos(tiny_blip_dir, tmp_path):
    images = write_photos(tmp_path / "set", ["astronaut", "chelsea", "coffee", "rocket", "china"], max_side=80)
    (tmp_path / "set" / "chelsea.txt").write_text("my cat", encoding="utf-8")
    captioner = BlipCaptioner(str(tiny_blip_dir), batch_size=2, max_length=12)
    assert captioner.device.type == "cpu" and not captioner.fp16
    sink = ListSink()
    texts = captioner.caption(images, sink=sink)  # paths, 3 batches (2+2+1)
    assert len(texts) == 5 and all(t.strip() for t in texts)
    assert all(caption_problem(t) is None for t in texts)
    assert not [e for e in sink.events if e["type"] == "warning"]
    for image, text in zip(images, texts):
        existing = (image.with_suffix(".txt").read_text() if image.with_suffix(".txt").exists() else None)
        atomic_write_text(image.with_suffix(".txt"), apply_existing_caption(text, existing, "prepend"))
    items = {i.image.stem: i for i in CaptionSet(tmp_path / "set").items()}
    assert all(i.has_file and i.caption and i.tokens > 0 for i in items.values())
    assert items["chelsea"].caption == f"my cat {texts[1]}"


def test_model_is_loaded_once_per_process(tiny_blip_dir):
    a = BlipCaptioner(tiny_blip_dir, max_length=8)
    b = BlipCaptioner(str(tiny_blip_dir) + "/", batch_size=3)
    assert a.model is b.model and a.processor is b.processor


def test_empty_generation_is_reported_not_silent(tmp_path):
    folder = write_tiny_blip(tmp_path / "mute", mute=True)
    sink = ListSink()
    results = BlipCaptioner(folder, min_length=0).caption_results(
        [tmp for tmp in write_photos(tmp_path / "imgs", ["coffee"], max_side=64)], sink=sink)
    assert results[0].text == "" and results[0].problem == "empty caption"
    warnings = [e for e in sink.events if e["type"] == "warning"]
    assert len(warnings) == 1 and "coffee.png" in warnings[0]["message"] and "empty caption" in warnings[0]["message"]


@pytest.mark.parametrize("text, bad", [("", True), ("   ", True), ("3 , 4", True), ("the the the the", True),
                                        ("a cat sitting on a table", False), ("cat", False)])
def test_caption_problem(text, bad):
    assert (caption_problem(text) is not None) is bad


def test_offline_missing_hub_model_explains_how_to_fetch():
    code = (
        "from core.prep.blip import BlipCaptioner\n"
        "from core.errors import TiwizError\n"
        "try:\n"
        "    BlipCaptioner('Salesforce/blip-image-captioning-base')\n"
        "except TiwizError as e:\n"
        "    print(e)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-tiwiz-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    msg = out.stdout
    assert "not available on this machine" in msg and "HF_HUB_OFFLINE" in msg
    assert "huggingface-cli download Salesforce/blip-image-captioning-base" in msg and "--blip" in msg


def test_bad_local_folders(tmp_path):
    with pytest.raises(TiwizError, match="does not exist"):
        BlipCaptioner(tmp_path / "missing")
    with pytest.raises(TiwizError, match="no config.json"):
        BlipCaptioner(tmp_path)
    with pytest.raises(TiwizError):
        BlipCaptioner(tmp_path, max_length=1)
