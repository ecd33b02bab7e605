"""The WD14-style tagger (`--tagger`) on a tiny ONNX tagger built here (tests/tiny_tagger.py), whose outputs are
computed by hand: exact tags at several thresholds, BGR order and the 0..255 range, ratings, character threshold,
transparency composited on white, padding, exclusions, and the whole `tiwiz preprocess --tagger` path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import FieldError, TiwizError
from core.prep.options import PreprocessOptions
from core.prep.preprocess import run_preprocess
from core.prep.tagger import TagSettings, Tagger, prepare_image, read_tag_table, select_tags
from tests.tiny_tagger import build_tiny_tagger, expected_scores

ROOT = Path(__file__).resolve().parent.parent
BLUE, RED, WHITE, BLACK = (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 0, 0)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def solid(colour, size=(32, 32), mode="RGB"):
    return Image.new(mode, size, colour)


def tags_of(tagger_dir, image, **settings):
    return Tagger(str(tagger_dir), TagSettings(**settings)).caption_results([image])[0].text.split(", ")


def test_exact_tags_at_several_thresholds(tagger_dir):
    blue = solid(BLUE)
    # characters first (0.9 only at the default 0.85), then general tags by confidence
    assert tags_of(tagger_dir, blue) == ["hatsune miku", "blue background", "p70", "^_^", "half", "p40"]
    assert tags_of(tagger_dir, blue, general_threshold=0.45) == ["hatsune miku", "blue background", "p70", "^_^",
                                                                 "half"]
    assert tags_of(tagger_dir, blue, general_threshold=0.65) == ["hatsune miku", "blue background", "p70"]
    assert tags_of(tagger_dir, blue, general_threshold=1.0, character_threshold=0.95) == [""]
    assert tags_of(tagger_dir, blue, character_threshold=0.75, general_threshold=0.65) == [
        "hatsune miku", "kagamine rin", "blue background", "p70"]


def test_scores_match_the_hand_computed_ones(tagger_dir):
    tagger = Tagger(str(tagger_dir))
    names = read_tag_table(tagger_dir / "selected_tags.csv").names
    rows = tagger.scores([solid(BLUE), solid((10, 200, 40))])
    for row, bgr in zip(rows, [(255, 0, 0), (40, 200, 10)]):
        want = expected_scores(bgr)
        assert row == pytest.approx([want[n] for n in names], abs=1e-5)


def test_bgr_order_and_0_255_range(tagger_dir):
    arr = prepare_image(solid(RED), 8)
    assert arr.dtype == np.float32 and arr.shape == (8, 8, 3)
    assert arr[..., 0].max() == 0 and arr[..., 2].min() == 255  # red is channel 2: BGR, on 0..255
    assert "red background" in tags_of(tagger_dir, solid(RED))
    assert "blue background" not in tags_of(tagger_dir, solid(RED))  # a tagger fed RGB would say blue
    assert "white background" in tags_of(tagger_dir, solid(WHITE))  # a tagger fed 0..1 would never say it
    tagger = Tagger(str(tagger_dir))
    rgb_scores = tagger.session.run(None, {tagger.input_name: prepare_image(solid(RED), 8)[None, :, :, ::-1].copy()})
    names = tagger.table.names
    assert rgb_scores[0][0][names.index("blue_background")] > 0.99  # the same image in RGB order: the wrong tag
    scaled = tagger.session.run(None, {tagger.input_name: prepare_image(solid(WHITE), 8)[None] / 255})
    assert scaled[0][0][names.index("white_background")] < 0.01


def test_ratings_left_out_unless_asked(tagger_dir):
    assert not {"general", "sensitive", "questionable", "explicit"} & set(tags_of(tagger_dir, solid(BLUE)))
    assert tags_of(tagger_dir, solid(BLUE), rating=True)[:2] == ["sensitive", "hatsune miku"]


def test_transparent_image_is_composited_on_white(tagger_dir):
    clear_red = solid((255, 0, 0, 0), mode="RGBA")  # red pixels, fully transparent
    arr = prepare_image(clear_red, 8)
    assert arr.min() == 255
    tags = tags_of(tagger_dir, clear_red)
    assert "white background" in tags and "red background" not in tags
    half = solid((0, 0, 255, 255), mode="RGBA")
    assert "blue background" in tags_of(tagger_dir, half)
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 0  # every pixel is palette entry 0, blue and transparent
    assert prepare_image(palette, 8).min() == 255


def test_padded_with_white_to_a_centred_square(tagger_dir):
    wide = solid(BLACK, size=(32, 8))
    arr = prepare_image(wide, 8)
    assert (arr[:3] == 255).all() and (arr[-3:] == 255).all() and (arr[3:5] == 0).all()  # 12+8+12 rows, /4
    assert arr.mean() == pytest.approx(255 * 0.75)
    assert "white background" in tags_of(tagger_dir, wide)  # mean 191: white padding counted
    small = solid(BLUE, size=(4, 2))  # smaller than the model's input: enlarged (Lanczos), still pure blue
    assert "blue background" in tags_of(tagger_dir, small)


def test_excluded_tags_max_tags_and_underscores(tagger_dir):
    blue = solid(BLUE)
    assert tags_of(tagger_dir, blue, exclude=("blue background", "half", "Hatsune_Miku")) == ["p70", "^_^", "p40"]
    assert tags_of(tagger_dir, blue, max_tags=3) == ["hatsune miku", "blue background", "p70"]
    assert tags_of(tagger_dir, blue, keep_underscores=True)[:2] == ["hatsune_miku", "blue_background"]
    assert "^_^" in tags_of(tagger_dir, blue)  # three characters or fewer: an emoticon, kept as is


def test_a_bad_image_is_named_and_skipped(tagger_dir, tmp_path):
    from core.events import ListSink

    good = tmp_path / "good.png"
    solid(BLUE).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    sink = ListSink()
    results = Tagger(str(tagger_dir), batch_size=2).caption_results([good, bad, good], sink=sink,
                                                                     names=["good.png", "bad.png", "good.png"])
    assert [bool(r.problem) for r in results] == [False, True, False]
    assert results[0].text.startswith("hatsune miku, blue background")
    assert [e["file"] for e in sink.of_type("warning")] == ["bad.png"]


def test_model_and_tag_list_that_disagree_are_refused(tagger_dir, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    lines = (tagger_dir / "selected_tags.csv").read_text().splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(TiwizError, match="do not belong together"):
        Tagger(str(folder)).caption_results([solid(BLUE)])
    table = read_tag_table(tagger_dir / "selected_tags.csv")
    with pytest.raises(TiwizError, match="scores"):
        select_tags([0.5] * 3, table, TagSettings())


def test_missing_files_runtime_and_offline_hub_say_what_to_do(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TiwizError, match="lacks model.onnx and selected_tags.csv"):
        Tagger(str(empty))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(TiwizError) as info:
        Tagger("SmilingWolf/wd-vit-tagger-v3")
    text = str(info.value)
    assert "not in the local Hugging Face cache" in text and "offline mode" in text
    assert "huggingface-cli download SmilingWolf/wd-vit-tagger-v3 model.onnx selected_tags.csv" in text
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(TiwizError, match=r"pip install 'tiwiz\[tagger\]'"):
        Tagger(str(empty))


def test_blip_and_tagger_together_are_refused():
    with pytest.raises(FieldError) as info:
        PreprocessOptions(blip="x", tagger="y").validate()
    assert info.value.field == "tagger"


def source_folder(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    solid(BLUE, (96, 64)).save(src / "blue.png")
    solid(RED, (64, 96)).save(src / "red.png")
    (src / "red.txt").write_text("zxq, red background", encoding="utf-8")
    solid((255, 0, 0, 0), (64, 64), "RGBA").save(src / "clear.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return src


def test_preprocess_with_the_tagger_and_caption_actions(tagger_dir, tmp_path):
    from core.events import ListSink

    sink = ListSink()
    opts = PreprocessOptions(width=64, height=64, tagger=str(tagger_dir), caption_action="prepend", flip=True,
                             background="#ffffff", tagger_batch_size=2, tag_threshold=0.65)
    report = run_preprocess(source_folder(tmp_path), tmp_path / "out", opts, sink, workers=1)
    out = tmp_path / "out"
    captions = {p.stem: p.read_text(encoding="utf-8") for p in out.glob("*.txt")}
    assert captions["blue"] == captions["blue-flip"] == "hatsune miku, blue background, p70"
    # prepend, as tags: the existing caption first, the generated tags it already has not repeated
    assert captions["red"] == "zxq, red background, hatsune miku, p70"
    # the tagger sees the training image: transparency composited on --background (white here)
    assert captions["clear"] == "hatsune miku, white background, p70"
    assert report.captions == {"tagger": str(tagger_dir), "written": 6}
    assert [s["file"] for s in report.skipped] == ["broken.png"]  # named and skipped, the run goes on
    phases = [e for e in sink.of_type("progress") if e["phase"] == "captions"]
    assert phases[-1]["done"] == phases[-1]["total"] == 3 and len(phases) == 2  # batches of 2


def test_cli_tagger_offline_fails_before_any_work(tmp_path):
    src = source_folder(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf/hub"))
    proc = subprocess.run([sys.executable, "-m", "core.cli", "preprocess", str(src), str(tmp_path / "out"),
                           "--tagger", "SmilingWolf/wd-eva02-large-tagger-v3"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "huggingface-cli download SmilingWolf/wd-eva02-large-tagger-v3" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_jsonl_with_the_tagger(tagger_dir, tmp_path):
    src = source_folder(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "core.cli", "preprocess", str(src), str(tmp_path / "out"),
                           "--jsonl", "--workers", "1", "--width", "64", "--height", "64", "--tagger", str(tagger_dir),
                           "--character-threshold", "0.75", "--exclude-tags", "p70, ^_^", "--rating-tags",
                           "--max-tags", "4"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any(e["type"] == "progress" and e.get("phase") == "captions" for e in events)
    assert (tmp_path / "out" / "blue.txt").read_text() == "sensitive, hatsune miku, kagamine rin, blue background"
