import random
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import TiwizError
from core.training.templates import list_templates, load_template, render, templates_dir

BUILTINS = ["none", "style", "style_filewords", "style_tags", "subject", "subject_filewords", "subject_tags"]


def test_builtins_listed_and_shaped():
    assert list_templates() == BUILTINS
    for name in BUILTINS:
        t = load_template(name)
        assert t.name == name and t.lines and t.path == templates_dir() / f"{name}.txt"
        assert all("[name]" in line for line in t.lines), name
        assert all(line == line.strip() and line for line in t.lines)
        assert t.uses_filewords == name.endswith(("_filewords", "_tags"))
        if name.endswith(("_filewords", "_tags")):
            assert all("[filewords]" in line for line in t.lines)
    assert len(load_template("style").lines) >= 15 and len(load_template("subject").lines) >= 20
    assert load_template("none").lines == ["[name]"]


def test_builtin_by_file_name_and_user_path(tmp_path):
    assert load_template("subject_filewords.txt").lines == load_template("subject_filewords").lines
    user = tmp_path / "mine.txt"
    user.write_text("\ufeff  a photo of [name], [filewords]  \n\n   \nan oil study of [name]\r\n", encoding="utf-8")
    t = load_template(str(user))
    assert t.name == "mine" and t.path == user
    assert t.lines == ["a photo of [name], [filewords]", "an oil study of [name]"]
    # a user's file wins over a built-in name only when given as a path
    shadow = tmp_path / "style.txt"
    shadow.write_text("only [name]\n")
    assert load_template(shadow).lines == ["only [name]"]
    assert load_template("style").lines != ["only [name]"]


def test_template_without_name_refused(tmp_path):
    hyper = tmp_path / "hypernetwork.txt"
    hyper.write_text("a photo of [filewords]\na picture of [filewords]\n")
    with pytest.raises(TiwizError, match=r"no \[name\]"):
        load_template(hyper)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(TiwizError, match="empty"):
        load_template(empty)


def test_lines_without_name_kept_and_reported(tmp_path):
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a photo of [name]\npicture\n")
    t = load_template(mixed)
    assert t.lines == ["a photo of [name]", "picture"] and t.lines_without_name == ["picture"]


def test_bad_template_arguments(tmp_path):
    with pytest.raises(TiwizError, match="unknown template 'nope'.*style_filewords"):
        load_template("nope")
    with pytest.raises(TiwizError, match="not found"):
        load_template(str(tmp_path / "missing" / "t.txt"))
    with pytest.raises(TiwizError, match="not found: my_prompts.txt"):
        load_template("my_prompts.txt")
    with pytest.raises(TiwizError, match="folder"):
        load_template(tmp_path)
    with pytest.raises(TiwizError, match="no template"):
        load_template("  ")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("une \xe9tude de [name]\n".encode("latin-1"))
    with pytest.raises(TiwizError, match="UTF-8"):
        load_template(latin)


def test_render_substitutes_name_and_filewords():
    rng = random.Random(1)
    assert render("a photo of [name], [filewords]", "zxq", "red hat, smiling", rng=rng) == \
        "a photo of zxq, red hat, smiling"
    assert render("[name] and [name] by [name]", "zxq", "x", rng=rng) == "zxq and zxq by zxq"
    assert render("art by [name]", "zxq", "tags, ignored", rng=rng) == "art by zxq"
    # tags are trimmed and empty ones dropped
    assert render("[filewords], [name]", "zxq", " a ,, b ,c ", rng=rng) == "a, b, c, zxq"
    # A1111 substitutes [name] inside captions too
    assert render("[filewords]; [name]", "zxq", "[name] on a beach", rng=rng) == "zxq on a beach; zxq"


def test_render_empty_caption_leaves_no_dangling_commas():
    rng = random.Random(0)
    assert render("a photo of [name], [filewords]", "zxq", "", rng=rng) == "a photo of zxq"
    assert render("[filewords], art by [name]", "zxq", " , ", rng=rng) == "art by zxq"
    assert render("a photo of [name], [filewords]", "zxq", "a, b", tag_dropout=1.0, rng=rng) == "a photo of zxq"


def test_shuffle_is_seeded_and_keeps_tags():
    tags = [f"tag{i}" for i in range(12)]
    caption = ", ".join(tags)
    outs = [render("[filewords]", "n", caption, shuffle_tags=True, rng=random.Random(seed)) for seed in range(20)]
    assert outs == [render("[filewords]", "n", caption, shuffle_tags=True, rng=random.Random(seed)) for seed in range(20)]
    for out in outs:
        assert sorted(out.split(", ")) == sorted(tags)
    assert len(set(outs)) > 15  # different seeds give different orders
    assert render("[filewords]", "n", caption, rng=random.Random(3)) == caption  # no shuffle: order kept


def test_dropout_rate_and_order():
    tags = [f"t{i}" for i in range(40)]
    caption = ", ".join(tags)
    kept = 0
    for seed in range(50):
        out = render("[filewords] [name]", "n", caption, tag_dropout=0.25, rng=random.Random(seed))
        words = out[:-2].split(", ")
        assert words == [t for t in tags if t in words]  # dropout alone keeps the order
        kept += len(words)
    assert 0.68 < kept / (40 * 50) < 0.82
    assert render("[filewords]", "n", caption, tag_dropout=0.0, rng=random.Random(0)) == caption
    with pytest.raises(TiwizError, match="between 0 and 1"):
        render("[filewords]", "n", caption, tag_dropout=1.5, rng=random.Random(0))


def test_render_uses_only_the_given_rng():
    random.seed(123)
    before = random.getstate()
    rng = random.Random(5)
    render("[name], [filewords]", "n", "a, b, c, d", shuffle_tags=True, tag_dropout=0.3, rng=rng)
    assert random.getstate() == before
    assert rng.getstate() != random.Random(5).getstate()


def test_templates_module_is_torch_free():
    code = ("import sys; import core.training.templates as t; t.load_template('style_filewords'); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'textual') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
