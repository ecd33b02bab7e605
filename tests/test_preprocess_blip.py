"""`--blip`: captions from a tiny random BLIP saved to disk (the shared fixture), loaded like a real model."""

import pytest

from core.errors import TiwizError
from core.prep.preprocess import run_preprocess
from core.prep.options import PreprocessOptions
from tests.preprocess_cases import photo


# Two actions here (BLIP generation is the slow part); all four are checked without BLIP in test_preprocess_run.py.
@pytest.mark.parametrize("action", ["copy", "prepend"])
def test_blip_captions_with_existing_captions(tmp_path, tiny_blip_dir, action):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "chelsea"):
        photo(name, (96, 64)).save(src / f"{name}.jpg")
    (src / "chelsea.txt").write_text("my cat", encoding="utf-8")
    opts = PreprocessOptions(width=64, height=64, blip=str(tiny_blip_dir), blip_batch_size=2, flip=True,
                             caption_action=action)
    report = run_preprocess(src, tmp_path / "out", opts, workers=1)
    out = tmp_path / "out"
    captions = {p.stem: p.read_text(encoding="utf-8") for p in out.glob("*.txt")}
    assert report.captions["blip"] == str(tiny_blip_dir) and "error" not in report.captions
    assert set(captions) == {"astronaut", "astronaut-flip", "chelsea", "chelsea-flip"}
    assert all(c.strip() == c and c for c in captions.values())
    assert captions["astronaut-flip"] == captions["astronaut"]  # the mirrored copy shares its caption
    assert captions["chelsea-flip"] == captions["chelsea"]
    generated = captions["astronaut"]  # no existing caption: BLIP's own, whatever the action
    assert "my cat" not in generated
    cat = captions["chelsea"]
    if action == "copy":
        assert cat == "my cat"  # replaces what BLIP would have said
    else:
        assert cat.startswith("my cat ") and len(cat) > len("my cat ")


def test_blip_model_missing_fails_before_writing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee", (96, 64)).save(src / "coffee.jpg")
    with pytest.raises(TiwizError, match="no-such-blip"):
        run_preprocess(src, tmp_path / "out", PreprocessOptions(blip=str(tmp_path / "no-such-blip")), workers=1)
    assert not (tmp_path / "out").exists()
