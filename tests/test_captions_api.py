import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.prep import captions
from core.prep.captions import CaptionSet, apply_existing_caption
from core.errors import TiwizError
from tests.captions_photos import write_photos

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "set"
    images = write_photos(folder, ["astronaut", "chelsea", "coffee", "rocket"], max_side=64)
    (folder / "astronaut.txt").write_text("a woman, space suit, photo\n", encoding="utf-8")
    (folder / "chelsea.txt").write_text("a cat,  orange fur", encoding="utf-8")
    (folder / "coffee.txt").write_text("", encoding="utf-8")
    # rocket has no caption; these must never be listed as items
    (folder / ".hidden.png").write_bytes((folder / "rocket.png").read_bytes())
    (folder / "notes.txt").write_text("stray note", encoding="utf-8")
    (folder / "sub").mkdir()
    return folder, {p.stem: p for p in images}


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_items_lists_images_captions_and_token_counts(dataset):
    folder, imgs = dataset
    items = CaptionSet(folder).items()
    assert [i.image.name for i in items] == ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]
    by = {i.image.stem: i for i in items}
    assert by["astronaut"].caption == "a woman, space suit, photo"
    assert by["astronaut"].tokens == 7  # a woman , space suit , photo
    assert by["chelsea"].tags == ["a cat", "orange fur"]
    assert by["coffee"].has_file and by["coffee"].is_empty and by["coffee"].tokens == 0
    assert by["rocket"].is_missing and by["rocket"].caption == "" and not by["rocket"].is_empty
    assert by["astronaut"].to_dict()["tokens"] == 7


def test_set_caption_is_atomic_and_touches_only_that_file(dataset):
    folder, imgs = dataset
    before = snapshot(folder)
    item = CaptionSet(folder).set_caption(imgs["rocket"], "  a rocket on a launch pad \n")
    assert item.caption == "a rocket on a launch pad" and item.has_file and item.tokens == 6
    after = snapshot(folder)
    assert after.pop("rocket.txt") == b"a rocket on a launch pad"
    assert after == before  # everything else, images included, byte-identical
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_set_caption_by_relative_name_and_refuses_non_images(dataset):
    folder, _ = dataset
    cs = CaptionSet(folder)
    assert cs.set_caption("chelsea.png", "cat").caption == "cat"
    assert (folder / "chelsea.txt").read_text() == "cat"
    with pytest.raises(TiwizError):
        cs.set_caption("notes.txt", "x")
    with pytest.raises(TiwizError):
        cs.set_caption("nope.png", "x")


def test_add_tag_prepend_skips_captions_that_have_it(dataset):
    folder, _ = dataset
    (folder / "chelsea.txt").write_text("sks, a cat", encoding="utf-8")
    before = snapshot(folder)
    changed = CaptionSet(folder).add_tag("  SKS ", position="prepend")  # same tag, other case/whitespace
    assert changed == 3  # astronaut, coffee (empty), rocket (missing -> created); chelsea already had it
    assert (folder / "astronaut.txt").read_text() == "SKS, a woman, space suit, photo"
    assert (folder / "coffee.txt").read_text() == "SKS"
    assert (folder / "rocket.txt").read_text() == "SKS, rocket"  # the file-name caption kept
    assert (folder / "chelsea.txt").read_bytes() == before["chelsea.txt"]
    assert (folder / "notes.txt").read_bytes() == before["notes.txt"]
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.png"):
        assert (folder / name).read_bytes() == before[name]


def test_add_tag_append_to_chosen_images_only(dataset):
    folder, imgs = dataset
    before = snapshot(folder)
    assert CaptionSet(folder).add_tag("best quality", "append", images=[imgs["chelsea"]]) == 1
    assert (folder / "chelsea.txt").read_text() == "a cat, orange fur, best quality"
    after = snapshot(folder)
    after.pop("chelsea.txt"), before.pop("chelsea.txt")
    assert after == before


def test_remove_tag_counts_changed_files(dataset):
    folder, _ = dataset
    (folder / "rocket.txt").write_text("photo, rocket, Photo", encoding="utf-8")
    before = snapshot(folder)
    assert CaptionSet(folder).remove_tag("photo") == 2
    assert (folder / "astronaut.txt").read_text() == "a woman, space suit"
    assert (folder / "rocket.txt").read_text() == "rocket"
    assert (folder / "chelsea.txt").read_bytes() == before["chelsea.txt"]
    assert CaptionSet(folder).remove_tag("photo") == 0


def test_replace_tag_across_captions(dataset):
    folder, _ = dataset
    (folder / "rocket.txt").write_text("rocket,orange  fur , sky", encoding="utf-8")
    (folder / "coffee.txt").write_text("ginger fur, orange fur", encoding="utf-8")
    before = snapshot(folder)
    assert CaptionSet(folder).replace_tag("orange fur", "ginger fur") == 3
    assert (folder / "chelsea.txt").read_text() == "a cat, ginger fur"
    assert (folder / "rocket.txt").read_text() == "rocket, ginger fur, sky"  # position kept, whitespace normalised
    assert (folder / "coffee.txt").read_text() == "ginger fur"  # no duplicate
    assert (folder / "astronaut.txt").read_bytes() == before["astronaut.txt"]
    assert CaptionSet(folder).replace_tag("orange fur", "ginger fur") == 0


def test_replace_with_empty_removes_and_bad_tags_refused(dataset):
    folder, _ = dataset
    cs = CaptionSet(folder)
    assert cs.replace_tag("space suit", "") == 1
    assert (folder / "astronaut.txt").read_text() == "a woman, photo"
    for bad in ("", "   ", "a, b"):
        with pytest.raises(TiwizError):
            cs.add_tag(bad)
    with pytest.raises(TiwizError):
        cs.add_tag("x", position="middle")


def test_find_and_filter(dataset):
    folder, _ = dataset
    long = ", ".join(f"tag{i}" for i in range(40))  # far over 75 tokens
    (folder / "rocket.txt").write_text(long, encoding="utf-8")
    cs = CaptionSet(folder)
    names = lambda items: [i.image.stem for i in items]
    assert names(cs.find("CAT")) == ["chelsea"]
    assert names(cs.find("coff")) == ["coffee"]  # image name matches too
    assert names(cs.find(tag="Space  Suit")) == ["astronaut"]
    assert names(cs.find(tag="space")) == []  # a tag match is whole-tag
    assert names(cs.find(empty=True)) == ["coffee"]
    assert names(cs.find(over_limit=True)) == ["rocket"]
    (folder / "rocket.txt").unlink()
    assert names(cs.find(missing=True)) == ["rocket"]
    assert names(cs.find(empty=True)) == ["coffee", "rocket"]
    assert cs.tag_counts()["a cat"] == 1


def test_non_utf8_caption_survives_an_edit(dataset):
    folder, _ = dataset
    (folder / "rocket.txt").write_bytes("caf\xe9, rocket".encode("latin-1"))
    assert CaptionSet(folder).add_tag("sky") == 4
    assert (folder / "rocket.txt").read_text(encoding="utf-8") == "café, rocket, sky"


def test_not_a_folder(tmp_path):
    with pytest.raises(TiwizError, match="not a folder"):
        CaptionSet(tmp_path / "missing")


@pytest.mark.parametrize(
    "generated, existing, action, expected",
    [
        ("a cat", "my cat", "ignore", "a cat"),
        ("a cat", "my cat", "copy", "my cat"),
        ("a cat", "my cat", "prepend", "my cat a cat"),
        ("a cat", "my cat", "append", "a cat my cat"),
        ("a cat", None, "copy", "a cat"),
        ("a cat", "", "prepend", "a cat"),
        ("", "my cat", "append", "my cat"),
        ("", "my cat\n", "prepend", "my cat"),
        ("", None, "ignore", ""),
        ("", "  ", "copy", ""),
    ],
)
def test_apply_existing_caption(generated, existing, action, expected):
    assert apply_existing_caption(generated, existing, action) == expected


def test_apply_existing_caption_unknown_action():
    with pytest.raises(TiwizError, match="ignore, copy, prepend, append"):
        apply_existing_caption("a", "b", "merge")


def test_caption_modules_import_no_torch():
    code = (
        "import sys, core.prep.captions, core.tokens, core.prep.phash\n"
        "core.prep.captions.CaptionSet\n"
        "print(core.tokens.count_tokens('a photo of a cat'))\n"
        "bad = [m for m in ('torch', 'transformers', 'diffusers', 'textual') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
