"""Embedding kinds in a real (tiny) training run (issue 20): a negative embedding's previews are pairs from one seed,
and the contact sheet shows the pairs; a style embedding previews with the style prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.events import ListSink
from core.training.contact_sheet import preview_files
from core.training.kinds import LABEL_H, PAIR_GAP
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_negative_run_writes_preview_pairs(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_model_dir, data, steps=2, preview_every=2, preview_steps=2, kind="negative",
                      preview_negative="lowres")
    Trainer(cfg, tmp_path / "out", ListSink()).run()
    previews = tmp_path / "out" / "previews"
    shots = preview_files(previews, "tcat")
    assert [step for step, _ in shots][-1] == 2
    assert all(Image.open(path).size == (2 * 64 + PAIR_GAP, 64 + LABEL_H) for _, path in shots)
    pair = np.asarray(Image.open(shots[-1][1]).convert("RGB")).astype(int)
    assert pair.shape == (64 + LABEL_H, 2 * 64 + PAIR_GAP, 3)
    without, with_it = pair[:64, :64], pair[:64, 64 + PAIR_GAP:]
    assert np.abs(without - with_it).mean() > 0.5  # the embedding in the negative prompt changes the image
    sheet = Image.open(previews / "sheet.png")
    assert sheet.width >= 2 * 64  # the sheet's thumbnail is the pair


def test_style_and_subject_runs_write_single_previews(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_model_dir, data, steps=2, preview_every=2, preview_steps=1, kind="style")
    Trainer(cfg, tmp_path / "out", ListSink()).run()
    shots = preview_files(tmp_path / "out" / "previews", "tcat")
    assert shots and all(Image.open(path).size == (64, 64) for _, path in shots)


def test_tag_captions_train_on_the_tag_template_with_kept_tags(tiny_model_dir, tmp_path):
    """A run on tag captions with the default template trains on `[name], [filewords]`; keep_tags keeps the first
    tag first under shuffle and dropout, in the prompts the update draws."""
    from types import SimpleNamespace

    from core.models.loader import load_model
    from core.training.session import _load_data
    from core.training.update import prompt_for

    data = make_images(tmp_path / "data", n=3, captions=False)
    for i, path in enumerate(sorted(data.glob("*.png"))):
        path.with_suffix(".txt").write_text(f"zxq, 1girl, solo, blue hair, smile, sky {i}", encoding="utf-8")
    cfg = tiny_config(tiny_model_dir, data, shuffle_tags=True, tag_dropout=0.5, keep_tags=1)
    model = load_model(tiny_model_dir, device="cpu")
    template, dataset, feed, _ = _load_data(cfg, model, "cpu", ListSink())
    assert template.name == "subject_tags"
    session = SimpleNamespace(config=cfg, feed=feed, template=template, placeholder="<tcat>", dataset=dataset)
    prompts = [prompt_for(session, i % 3) for i in range(60)]
    assert all(p.startswith("<tcat>, zxq") for p in prompts)
    assert len(set(prompts)) > 10  # the other tags shuffled and dropped
