"""One home for each concept: the wizard, preprocessing, the doctor and the trainer read captions, list images and
load pixels with the same code, so they can never disagree."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.prep import captions, images
from core.prep.captions import CaptionSet, list_images, training_caption
from core.training import dataset


def _png(path, mode="RGB", colour=(10, 20, 30), size=(16, 16)):
    Image.new(mode, size, colour).save(path)
    return path


TRICKY = {
    "bom": "\ufeffa cat, blue hat".encode("utf-8"),
    "crlf": b"a cat,\r\n blue hat\r\n",
    "trailing": b"a cat, blue hat   \t\n\n",
    "multiline": b"a cat,\nblue hat\n\nsitting",
    "latin1": "caf\xe9, rocket".encode("latin-1"),
    "empty": b"",
    "spaces": b"   \n",
}


def test_wizard_and_trainer_read_the_same_caption(tmp_path):
    for stem, data in TRICKY.items():
        _png(tmp_path / f"{stem}.png")
        (tmp_path / f"{stem}.txt").write_bytes(data)
    _png(tmp_path / "0012-missing_caption.png")
    items = {i.image.stem: i for i in CaptionSet(tmp_path).items()}
    for path in list_images(tmp_path):
        # what the wizard shows as "the caption the trainer uses" is what the trainer's dataset reads
        assert items[path.stem].training_caption == training_caption(path)
    assert training_caption(tmp_path / "bom.png") == "a cat, blue hat"  # no stray U+FEFF at the start
    assert training_caption(tmp_path / "crlf.png") == "a cat, blue hat"
    assert training_caption(tmp_path / "trailing.png") == "a cat, blue hat"
    assert training_caption(tmp_path / "multiline.png") == "a cat, blue hat sitting"
    assert training_caption(tmp_path / "latin1.png") == "café, rocket"
    assert training_caption(tmp_path / "empty.png") == "" and items["empty"].is_empty
    assert training_caption(tmp_path / "spaces.png") == ""
    assert training_caption(tmp_path / "0012-missing_caption.png") == "missing caption"
    assert items["0012-missing_caption"].caption == "" and items["0012-missing_caption"].is_missing
    assert not hasattr(dataset, "read_caption")  # the trainer has no reader of its own


def test_one_image_lister(tmp_path):
    for name in ("b.PNG", "a.jpg", "C.webp", "d.Tiff", ".hidden.png", "notes.txt", "e.gif"):
        _png(tmp_path / name) if not name.endswith(".txt") else (tmp_path / name).write_text("x")
    (tmp_path / "folder.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["C.webp", "a.jpg", "b.PNG", "d.Tiff", "e.gif"]  # code-point order, any-case extensions
    assert dataset.list_images is captions.list_images and dataset.IMAGE_EXTENSIONS is captions.IMAGE_EXTENSIONS


def test_one_rgb_loader_with_grey_behind_transparency(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(path)  # fully transparent red
    half = tmp_path / "la.png"
    Image.new("LA", (16, 16), (0, 0)).save(half)
    expected = images.TRANSPARENT_BACKGROUND
    assert images.TRANSPARENT_BACKGROUND == (128, 128, 128)
    for p in (path, half):
        trainer = np.asarray(dataset.load_rgb(p))
        prep = np.asarray(images.load_rgb(p).image)
        assert trainer.shape == (16, 16, 3) and (trainer == prep).all()
        assert tuple(trainer[0, 0]) == expected
    from core.prep.blip import _rgb
    from core.prep.options import PreprocessOptions

    with Image.open(path) as im:
        assert tuple(np.asarray(_rgb(im))[0, 0]) == expected
    assert PreprocessOptions().background_rgb == expected


def test_preview_shows_transparency_like_the_trainer(tmp_path):
    from tui.widgets.image_preview import load_thumbnail

    path = tmp_path / "clear.png"
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(path)
    assert tuple(np.asarray(load_thumbnail(path))[0, 0]) == images.TRANSPARENT_BACKGROUND


@pytest.mark.parametrize("caption, tags", [
    ("a, b ,  c", ["a", "b", "c"]),
    ("a,,b, ", ["a", "b"]),
    ("", []),
    ("one  two,three", ["one two", "three"]),
])
def test_one_tag_splitter(caption, tags):
    from core.training import templates

    assert captions.split_tags(caption) == tags
    assert templates.split_tags is captions.split_tags


def test_one_duration_format():
    from core.cli import train as cli_train
    from core.timefmt import format_duration
    from tui import run_view

    assert format_duration(3725.9) == "1:02:05" and format_duration(65) == "01:05"
    for bad in (None, float("nan"), float("inf"), -3):
        assert format_duration(bad) == "--:--"
    assert run_view.format_duration is format_duration
    assert not hasattr(cli_train, "_duration")


def test_one_initial_vector_routine():
    import inspect

    from core.world import demo_job

    assert not hasattr(demo_job, "init_vectors_for")
    assert "init_vectors(pipe.tokenizer, pipe.text_encoder" in inspect.getsource(demo_job.before_after)


@pytest.mark.parametrize("module, name", [
    ("core.models.device", "prepare_for_device"),
    ("core.embeddings.vectors", "vector_norms"),
    ("core.embeddings.formats", "looks_like_embedding"),
    ("core.prep.phash", "hamming"),
    ("core.prep.blip", "clear_cache"),
    ("core.world.shapes", "nearest_color"),
    ("core.world.demo_job", "default_workdir"),
    ("core.cli.demo", "_has_runapi"),
])
def test_dead_code_is_gone(module, name):
    import importlib

    assert not hasattr(importlib.import_module(module), name)


def test_one_list_of_image_kinds_and_caption_actions(tmp_path):
    from core.prep import options
    from core.prep.doctor import diagnose
    from tui.state import STAGES, WIZARD_STAGES

    assert sorted(captions.IMAGE_KINDS.split(", ")) == sorted(e[1:] for e in captions.IMAGE_EXTENSIONS)
    (finding,) = [f for f in diagnose(tmp_path) if f.code == "no-images"]
    assert captions.IMAGE_KINDS in finding.message
    assert options.CAPTION_ACTIONS is captions.CAPTION_ACTIONS
    assert WIZARD_STAGES == tuple(s for s in STAGES if s not in ("start", "monitor", "finish"))
