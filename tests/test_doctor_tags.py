"""The doctor's tag findings (issue 20): the trigger word equal to an existing tag, a tag on nearly every image (and
what keeping or removing it does), images with very few tags; none of them for sentence captions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.prep.captions import CaptionSet, caption_is_tags, caption_language
from core.prep.doctor import diagnose
from tests.tui_support import gradient_png

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["1girl, solo, blue hair, smile, outdoors, sky, cloud, dress",
        "1girl, solo, blue hair, indoors, chair, book, window, sitting",
        "1girl, solo, blue hair, night, moon, city, lights, standing",
        "1girl, solo, blue hair, beach, ocean, sand, swimsuit, sunlight",
        "1girl, blue hair, forest, tree, grass, path, walking, backpack",
        "1girl, blue hair, smile"]


def folder(tmp_path, captions) -> Path:
    ds = tmp_path / "ds"
    for i, text in enumerate(captions):
        gradient_png(ds / f"img{i}.png", i, size=32)
        (ds / f"img{i}.txt").write_text(text, encoding="utf-8")
    return ds


def by_code(findings, code):
    return [f for f in findings if f.code == code]


def test_caption_language():
    assert caption_is_tags("1girl, solo, blue hair, smile") and not caption_is_tags("a photo of a cat, detailed")
    assert not caption_is_tags("a cat, red, outdoors")
    assert not caption_is_tags("a woman standing in a field of tall grass at sunset, warm light, film grain")


def test_tag_findings(tmp_path):
    ds = folder(tmp_path, TAGS)
    assert caption_language(CaptionSet(ds).items()) == "tags"
    findings = diagnose(ds, 32, 32, trigger="Blue_Hair")
    trigger = by_code(findings, "trigger-is-tag")
    assert len(trigger) == 1 and "Blue_Hair" in trigger[0].message and "6 captions" in trigger[0].message
    assert trigger[0].files == [f"img{i}.png" for i in range(6)]
    everywhere = by_code(findings, "tag-everywhere")
    # 1girl is on 6 of 6; blue hair too but it is the trigger (said above); solo on 4 of 6 is not "nearly every"
    assert [f.message.split("”")[0].lstrip("“") for f in everywhere] == ["1girl"]
    assert "6 of 6 images" in everywhere[0].message
    assert "the embedding will not learn it" in everywhere[0].message and "absorbs it" in everywhere[0].message
    few = by_code(findings, "few-tags")
    assert [f.files for f in few] == [["img5.png"]] and "3 tags (the median is 8)" in few[0].message
    assert not by_code(diagnose(ds, 32, 32, trigger="zxq"), "trigger-is-tag")


def test_no_tag_findings_for_sentences(tmp_path):
    ds = folder(tmp_path, ["a photo of a cat on a mat"] * 5 + ["a cat"])
    codes = {f.code for f in diagnose(ds, 32, 32, trigger="cat")}
    assert not codes & {"trigger-is-tag", "tag-everywhere", "few-tags"}


def test_cli_trigger_flag(tmp_path):
    ds = folder(tmp_path, TAGS)
    proc = subprocess.run([sys.executable, "-m", "core.cli", "doctor", str(ds), "--width", "32", "--height", "32",
                           "--trigger", "smile", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    codes = [f["code"] for f in json.loads(proc.stdout)["findings"]]
    assert "trigger-is-tag" in codes and "tag-everywhere" in codes and "few-tags" in codes
