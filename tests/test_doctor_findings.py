import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from core.prep.doctor import Finding, diagnose
from core.errors import TiwizError
from tests.captions_photos import photo

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ["astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
         "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "retina", "rocket",
         "shepp_logan_phantom", "cell", "china", "flower"]
SIZE = 64  # training size used by these tests; photos are saved at 96 px on the long side


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("doctor") / "clean"
    folder.mkdir()
    for name in CLEAN:
        photo(name, 96).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a photo of {name.replace('_', ' ')}, detailed", encoding="utf-8")
    return folder


@pytest.fixture
def work(clean_dir, tmp_path):
    return Path(shutil.copytree(clean_dir, tmp_path / "set"))


def codes(findings):
    return sorted({f.code for f in findings})


def only(findings, code):
    found = [f for f in findings if f.code == code]
    assert found, f"no {code} in {[(f.code, f.files) for f in findings]}"
    return found


def test_clean_set_has_no_findings(clean_dir):
    assert len(CLEAN) >= 20
    assert diagnose(clean_dir, SIZE, SIZE) == []


def test_near_duplicates_resized_and_cropped(work):
    im = photo("chelsea", 300)
    w, h = im.size
    im.crop((24, 12, w - 30, h - 20)).resize((150, 100)).save(work / "chelsea_crop.jpg", quality=85)
    photo("rocket", 200).save(work / "rocket_big.jpg", quality=80)
    (work / "chelsea_crop.txt").write_text("x", encoding="utf-8")
    (work / "rocket_big.txt").write_text("x", encoding="utf-8")
    found = only(diagnose(work, SIZE, SIZE), "near-duplicate")
    assert sorted(f.files for f in found) == [["chelsea.png", "chelsea_crop.jpg"], ["rocket.png", "rocket_big.jpg"]]
    assert all(f.severity == "warning" for f in found)


def test_too_small_and_extreme_aspect(work):
    photo("coffee", 48).save(work / "coffee.png")  # 48x32 < 64x64
    photo("coffee", 96).crop((0, 0, 96, 30)).save(work / "strip.png")  # 96x30, and also below 64 high
    (work / "strip.txt").write_text("a strip", encoding="utf-8")
    findings = diagnose(work, SIZE, SIZE)
    assert sorted(f.files[0] for f in only(findings, "too-small")) == ["coffee.png", "strip.png"]
    aspect = only(findings, "extreme-aspect")
    assert [f.files for f in aspect] == [["strip.png"]] and "31%" in aspect[0].message
    # aspect is judged against the target: for a 96x32 target the strip is fine and the square photos are not
    wide = {f.files[0] for f in diagnose(work, 96, 32) if f.code == "extreme-aspect"}
    assert "strip.png" not in wide and {"astronaut.png", "moon.png"} <= wide


def test_missing_empty_and_long_captions(work):
    (work / "moon.txt").unlink()
    (work / "coins.txt").write_text("  \n", encoding="utf-8")
    (work / "grass.txt").write_text(" ".join(["green grass"] * 38), encoding="utf-8")  # 76 tokens
    (work / "gravel.txt").write_text(" ".join(["grey gravel"] * 37) + " x", encoding="utf-8")  # 75 tokens: fine
    findings = diagnose(work, SIZE, SIZE)
    assert [f.files for f in only(findings, "missing-caption")] == [["moon.png"]]
    assert [f.files for f in only(findings, "empty-caption")] == [["coins.png"]]
    long = only(findings, "long-caption")
    assert [f.files for f in long] == [["grass.png"]] and "76 CLIP tokens" in long[0].message


def test_flipped_copy_of_a_face_but_not_of_a_cup(work):
    photo("astronaut", 400).save(work / "astronaut.png")
    ImageOps.mirror(photo("astronaut", 400)).save(work / "astronaut_flipped.png")
    ImageOps.mirror(photo("coffee", 96)).save(work / "coffee_flipped.png")
    for stem in ("astronaut_flipped", "coffee_flipped"):
        (work / f"{stem}.txt").write_text("x", encoding="utf-8")
    findings = diagnose(work, SIZE, SIZE)
    flipped = only(findings, "flipped-face")
    assert [sorted(f.files) for f in flipped] == [["astronaut.png", "astronaut_flipped.png"]]
    assert "near-duplicate" not in codes(findings)  # a mirror is reported as such, not as a plain duplicate


def test_too_few_images_and_errors(tmp_path, work):
    few = tmp_path / "few"
    few.mkdir()
    for name in CLEAN[:5]:
        shutil.copy(work / f"{name}.png", few)
        shutil.copy(work / f"{name}.txt", few)
    findings = diagnose(few, SIZE, SIZE)
    assert codes(findings) == ["too-few-images"] and findings[0].severity == "warning"
    assert "Only 5 usable images" in findings[0].message and "20–50" in findings[0].message

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert [(f.code, f.severity) for f in diagnose(empty)] == [("no-images", "error")]

    (work / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = only(diagnose(work, SIZE, SIZE), "unreadable")
    assert bad[0].severity == "error" and bad[0].files == ["broken.png"]

    with pytest.raises(TiwizError, match="not a folder"):
        diagnose(tmp_path / "nope")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", "doctor", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_and_table(work):
    out = run_cli(work, "--width", SIZE, "--height", SIZE, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["findings"] == [] and data["summary"] == {"error": 0, "warning": 0, "info": 0}

    (work / "moon.txt").unlink()
    (work / "broken.jpg").write_bytes(b"")
    out = run_cli(work, "--width", SIZE, "--height", SIZE, "--json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    got = {(f["code"], f["severity"], tuple(f["files"])) for f in data["findings"]}
    assert ("unreadable", "error", ("broken.jpg",)) in got and ("missing-caption", "warning", ("moon.png",)) in got
    assert set(Finding(**f).to_dict()["code"] for f in data["findings"]) == {"unreadable", "missing-caption"}

    (work / "broken.jpg").unlink()
    table = run_cli(work, "--width", SIZE, "--height", SIZE)
    assert table.returncode == 0 and "missing-caption" in table.stdout and "moon.png" in table.stdout
    assert "Traceback" not in table.stderr

    missing = run_cli(work / "nope")
    assert missing.returncode == 2 and "not a folder" in missing.stderr and "Traceback" not in missing.stderr
