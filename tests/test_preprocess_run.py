"""run_preprocess end to end on real photos: captions, names, folders, the report, flips, parallel workers."""

import json

import numpy as np
import pytest
from PIL import Image

from core.errors import TiwizError
from core.events import ListSink
from core.prep.preprocess import run_preprocess
from core.prep.options import PreprocessOptions, option_fields
from tests.preprocess_cases import photo, tree_digest

OPTS = dict(width=64, height=64)


def make_src(tmp_path, names=("astronaut", "chelsea", "coffee", "rocket")):
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for name in names:
        photo(name, (96, 72)).save(src / f"{name}.jpg")
    return src


@pytest.mark.parametrize("action, expected", [
    ("ignore", None),
    ("copy", "a woman in a spacesuit"),
    ("prepend", "a woman in a spacesuit"),  # nothing generated: the existing caption alone
    ("append", "a woman in a spacesuit"),
])
def test_caption_actions_without_a_captioner(tmp_path, action, expected):
    src = make_src(tmp_path, ("astronaut", "coffee"))
    (src / "astronaut.txt").write_text("  a woman in a spacesuit\n", encoding="utf-8")
    (src / "coffee.txt").write_text("   \n", encoding="utf-8")  # empty: never written
    run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS, caption_action=action, flip=True), workers=1)
    out = tmp_path / "out"
    for stem in ("astronaut", "astronaut-flip"):
        path = out / f"{stem}.txt"
        assert (path.read_text(encoding="utf-8") if path.exists() else None) == expected
    assert not (out / "coffee.txt").exists() and not (out / "coffee-flip.txt").exists()


def test_name_collisions_never_lose_a_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee", (96, 72)).save(src / "dup.jpg")
    photo("rocket", (96, 72)).save(src / "dup.png")
    photo("china", (96, 72)).save(src / "DUP.webp")
    photo("flower", (96, 72)).save(src / "dup-flip.png")  # would clash with dup's mirrored copy
    photo("chelsea", (96, 72)).save(src / "cat.png")
    photo("astronaut", (96, 72)).save(src / "cat-flip.png")
    report = run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS, flip=True), workers=1)
    names = report.written
    assert len(names) == 12 and len({n.casefold() for n in names}) == 12
    by_source = {s["file"]: [o["image"] for o in s["outputs"]] for s in report.sources}
    assert by_source["dup.jpg"] == ["dup-jpg.png", "dup-jpg-flip.png"]
    assert by_source["dup.png"] == ["dup-png.png", "dup-png-flip.png"]
    assert by_source["DUP.webp"] == ["DUP-webp.png", "DUP-webp-flip.png"]
    assert by_source["dup-flip.png"] == ["dup-flip.png", "dup-flip-flip.png"]
    # "cat-flip.png" sorts before "cat.png" and keeps its name; cat.png's mirrored copy would clash, so it moves.
    assert by_source["cat-flip.png"] == ["cat-flip.png", "cat-flip-flip.png"]
    assert by_source["cat.png"] == ["cat-2.png", "cat-2-flip.png"]
    on_disk = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert on_disk == sorted(names)
    # Each output shows its own source (the rocket is not overwritten by the coffee).
    a = np.asarray(Image.open(tmp_path / "out" / "dup-jpg.png"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "out" / "dup-png.png"), dtype=float)
    assert np.abs(a - b).mean() > 10


def test_dest_equal_to_or_inside_src_is_refused(tmp_path):
    src = make_src(tmp_path, ("coffee",))
    before = tree_digest(src)
    for dest in (src, src / "out", src / "a" / "b", tmp_path / "src" / ".." / "src"):
        with pytest.raises(TiwizError, match="SRC"):
            run_preprocess(src, dest, PreprocessOptions(**OPTS), workers=1)
    assert tree_digest(src) == before


def test_source_folder_is_never_modified(tmp_path):
    src = make_src(tmp_path)
    (src / "astronaut.txt").write_text("astronaut")
    (src / "notes.txt").write_text("stray")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    before = tree_digest(src)
    opts = PreprocessOptions(**OPTS, flip=True, split=True, focal_crop=True, focal_debug=True, caption_action="copy")
    report = run_preprocess(src, tmp_path / "out", opts, workers=2)
    assert report.written and report.skipped
    assert tree_digest(src) == before


def test_report_json_lists_sources_outputs_and_skips(tmp_path):
    src = make_src(tmp_path, ("astronaut", "coffee"))
    (src / "zero.jpg").write_bytes(b"")
    sink = ListSink()
    report = run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS), sink, workers=1)
    data = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert data["written"] == 2 and data["skipped"] == 1
    assert [s["file"] for s in data["sources"]] == ["astronaut.jpg", "coffee.jpg", "zero.jpg"]
    # SDXL's size conditioning: the source size, and the crop's corner in the source scaled to cover 64x64 (96x72
    # becomes 85x64, whose centred 64-wide crop starts at x=10)
    assert data["sources"][0]["outputs"] == [{"image": "astronaut.png", "kind": "crop", "flipped": False,
                                              "original_size": [96, 72], "crop_left_top": [10, 0]}]
    assert data["sources"][2] == {"file": "zero.jpg", "status": "skipped", "outputs": [],
                                  "reason": "empty file (0 bytes)"}
    assert data["options"]["width"] == 64
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temp files
    types = [e["type"] for e in sink.events]
    assert types[0] == "started" and types[-1] == "finished"
    progress = sink.of_type("progress")
    assert [(e["done"], e["total"]) for e in progress] == [(1, 3), (2, 3), (3, 3)]
    assert sink.of_type("finished")[0]["written"] == 2 and report.exit_code == 0


def test_dest_with_images_needs_overwrite(tmp_path):
    src = make_src(tmp_path, ("coffee",))
    run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS), workers=1)
    with pytest.raises(TiwizError, match="--overwrite"):
        run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS), workers=1)
    report = run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS, overwrite=True), workers=1)
    assert report.written == ["coffee.png"]


def test_flip_mirrors_and_warns_about_faces(tmp_path):
    src = make_src(tmp_path, ("coffee",))
    photo("astronaut", (128, 128)).save(src / "person.png")
    sink = ListSink()
    report = run_preprocess(src, tmp_path / "out", PreprocessOptions(**OPTS, flip=True), sink, workers=1)
    out = tmp_path / "out"
    a = np.asarray(Image.open(out / "coffee.png"))
    assert np.array_equal(np.asarray(Image.open(out / "coffee-flip.png")), a[:, ::-1])
    warnings = [e["message"] for e in sink.of_type("warning")]
    assert any("Faces were found in 1 image(s) (person.png)" in w and "likeness" in w for w in warnings)
    no_faces = run_preprocess(make_src(tmp_path / "b", ("coffee", "rocket")), tmp_path / "out2",
                              PreprocessOptions(**OPTS, flip=True), workers=1)
    assert not any("Faces" in w for w in no_faces.warnings)


def test_parallel_workers_give_the_same_files_as_serial(tmp_path):
    src = make_src(tmp_path, ("astronaut", "chelsea", "coffee", "rocket", "china", "flower"))
    (src / "bad.jpg").write_bytes(b"nope")
    opts = dict(**OPTS, split=True, split_threshold=0.9, flip=True)
    serial = run_preprocess(src, tmp_path / "serial", PreprocessOptions(**opts), workers=1)
    parallel = run_preprocess(src, tmp_path / "parallel", PreprocessOptions(**opts), workers=2)
    assert serial.written == parallel.written and len(serial.written) > 12
    assert serial.skipped == parallel.skipped
    for name in serial.written:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_options_describe_every_field_for_the_tui():
    entries = {e["name"]: e for e in option_fields()}
    assert entries["caption_action"]["choices"] == ("ignore", "copy", "prepend", "append")
    assert entries["width"]["default"] == 512 and entries["focal_entropy_weight"]["default"] == 0.15
    assert all(e["help"] and e["cli"].startswith("--") for e in entries.values())
    for bad in (dict(width=500), dict(split_overlap=0.95), dict(caption_action="keep"), dict(background="grey")):
        with pytest.raises(TiwizError):
            PreprocessOptions(**bad).validate()
    with pytest.raises(TiwizError, match="Unknown preprocess option"):
        PreprocessOptions.from_dict({"widht": 512})
