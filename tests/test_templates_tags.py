"""Tag captions in training (issue 20): keep_tags under shuffle and dropout, the tag templates, and the template a
kind proposes for tag captions (and why)."""

from __future__ import annotations

import random

import pytest

from core.errors import FieldError
from core.training.config import TrainConfig
from core.training.templates import DEFAULT_TEMPLATE, load_template, proposed_template, render

CAPTION = "zxq, 1girl, solo, blue hair, smile, sky, cloud, dress"
REST = ["solo", "blue hair", "smile", "sky", "cloud", "dress"]


def renders(n=200, **kw):
    rng = random.Random(0)
    return [render("[name], [filewords]", "emb", CAPTION, rng=rng, **kw).split(", ")[1:] for _ in range(n)]


def test_keep_tags_stay_first_under_shuffle_and_dropout():
    for tags in renders(shuffle_tags=True, tag_dropout=0.5, keep_tags=2):
        assert tags[:2] == ["zxq", "1girl"]  # never moved, never dropped
        assert set(tags[2:]) <= set(REST)
    outs = renders(shuffle_tags=True, tag_dropout=0.5, keep_tags=2)
    assert len({tuple(t[2:]) for t in outs}) > 20  # the others are shuffled and dropped
    assert min(len(t) for t in outs) < 8
    assert any(t[2:] != sorted(t[2:], key=REST.index) for t in outs)
    unkept = renders(shuffle_tags=True, keep_tags=0)
    assert any(t[0] != "zxq" for t in unkept)  # without keep_tags the first tag moves too


def test_keep_tags_alone_changes_nothing_and_more_than_there_are_is_fine():
    assert renders(n=3, keep_tags=3) == [CAPTION.split(", ")] * 3
    assert renders(n=3, shuffle_tags=True, tag_dropout=0.9, keep_tags=50) == [CAPTION.split(", ")] * 3


def test_keep_tags_is_a_config_field_with_bounds():
    assert TrainConfig(keep_tags=2).validate(require_paths=False).keep_tags == 2
    with pytest.raises(FieldError) as info:
        TrainConfig(keep_tags=-1).validate(require_paths=False)
    assert info.value.field == "keep_tags"
    with pytest.raises(FieldError) as info:
        TrainConfig(kind="quality").validate(require_paths=False)
    assert info.value.field == "kind"


def test_tag_templates_are_ours_and_load():
    assert load_template("subject_tags").lines == ["[name], [filewords]"]
    style = load_template("style_tags").lines
    assert style[0] == "[filewords], [name]" and all("[name]" in line and "[filewords]" in line for line in style)


def test_kind_proposes_tag_templates_for_tag_captions_and_says_why():
    assert proposed_template(DEFAULT_TEMPLATE, "subject", "tags")[0] == "subject_tags"
    assert proposed_template(DEFAULT_TEMPLATE, "style", "tags")[0] == "style_tags"
    assert proposed_template(DEFAULT_TEMPLATE, "negative", "tags")[0] == "style_tags"
    why = proposed_template(DEFAULT_TEMPLATE, "subject", "tags")[1]
    assert "booru tags" in why and "Illustrious" in why
    # sentence captions, and a template the user named, are kept exactly as before
    assert proposed_template(DEFAULT_TEMPLATE, "subject", "sentences") == (DEFAULT_TEMPLATE, "")
    assert proposed_template("subject_filewords", "subject", "tags") == ("subject_filewords", "")


def test_a_run_picks_its_template_from_its_captions():
    from core.training.kinds import training_template

    tags = ["1girl, solo, blue hair, smile", "1girl, smile, outdoors, sky", ""]
    assert training_template(DEFAULT_TEMPLATE, "style", tags)[0] == "style_tags"
    assert training_template(DEFAULT_TEMPLATE, "subject", ["a photo of a cat on a mat"] * 3) == (DEFAULT_TEMPLATE, "")
    assert training_template("none", "subject", tags) == ("none", "")
    # three short parts read as a description, not tags: the default template stays
    assert training_template(DEFAULT_TEMPLATE, "subject", ["thing 0, red, blue"] * 3) == (DEFAULT_TEMPLATE, "")
