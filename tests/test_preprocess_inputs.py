"""Every unusable file is skipped with its reason (one test each) and every usable-but-odd file comes out right."""

import io

import numpy as np
import pytest
from PIL import Image

from core.events import ListSink
from core.prep.images import ImageRejected, load_rgb
from core.prep.preprocess import run_preprocess
from core.prep.options import PreprocessOptions
from tests.preprocess_cases import bad_crc_png, bomb_png, photo, png_bytes

OPTS = PreprocessOptions(width=64, height=64)
GREY = (128, 128, 128)


def run_one(tmp_path, name: str, data: bytes, **options):
    """Preprocess a folder holding one real photo plus `name`; returns (record for name, report, sink)."""
    src = tmp_path / "src"
    src.mkdir()
    photo("chelsea", (96, 64)).save(src / "cat.jpg")
    (src / name).write_bytes(data)
    sink = ListSink()
    opts = PreprocessOptions(**{"width": 64, "height": 64, **options})
    report = run_preprocess(src, tmp_path / "out", opts, sink, workers=1)
    record = next(s for s in report.sources if s["file"] == name)
    assert "cat.png" in report.written  # the run goes on past a bad file
    return record, report, sink


def assert_skipped(tmp_path, name, data, *words):
    record, report, sink = run_one(tmp_path, name, data)
    assert record["status"] == "skipped" and record["outputs"] == []
    for word in words:
        assert word in record["reason"], record["reason"]
    assert {"file": name, "reason": record["reason"]} in report.skipped
    assert [e["file"] for e in sink.of_type("skipped")] == [name]
    assert "Traceback" not in record["reason"]


# --- unusable files -----------------------------------------------------------------------------------------------

def jpeg_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(photo("coffee", (120, 80)))
    assert_skipped(tmp_path, "half.jpg", data[: len(data) // 2], "truncated")


def test_truncated_png(tmp_path):
    data = png_bytes(photo("coffee", (120, 80)))
    assert_skipped(tmp_path, "half.png", data[: len(data) * 2 // 3], "truncated")


def test_zero_bytes(tmp_path):
    assert_skipped(tmp_path, "empty.png", b"", "empty file", "0 bytes")


def test_not_an_image(tmp_path):
    assert_skipped(tmp_path, "notes.jpg", b"these are my notes, not a picture\n" * 20, "not an image")


def test_heic(tmp_path):
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    assert_skipped(tmp_path, "IMG_0001.HEIC", heic, "HEIC", "JPEG or PNG")


def test_svg(tmp_path):
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect/></svg>'
    assert_skipped(tmp_path, "logo.svg", svg, "SVG", "export")


def test_decompression_bomb(tmp_path):
    assert_skipped(tmp_path, "bomb.png", bomb_png(60000, 60000), "60000×60000", "decompression bomb",
                   "--max-megapixels")


def test_pixel_limit_is_an_option(tmp_path):
    record, _, _ = run_one(tmp_path, "big.png", png_bytes(photo("astronaut")), max_megapixels=1.0)
    assert record["status"] == "written"  # 512x512 = 0.26 MP is under 1 MP
    with pytest.raises(ImageRejected, match="exceeds the 0 MP limit"):
        load_rgb(tmp_path / "src" / "big.png", max_pixels=100_000)


def test_bad_crc(tmp_path):
    assert_skipped(tmp_path, "damaged.png", bad_crc_png(photo("coffee", (120, 80))), "bad CRC", "IDAT")


def test_hidden_files_folders_and_stray_text_are_ignored_quietly(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    photo("chelsea", (96, 64)).save(src / "cat.jpg")
    photo("coffee", (96, 64)).save(src / ".hidden.jpg")
    photo("coffee", (96, 64)).save(src / "sub" / "nested.jpg")
    (src / "._cat.jpg").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (src / "readme.txt").write_text("stray notes")
    (src / "cat.txt").write_text("a cat")
    sink = ListSink()
    report = run_preprocess(src, tmp_path / "out", OPTS, sink, workers=1)
    assert [s["file"] for s in report.sources] == ["cat.jpg"]
    assert report.skipped == [] and not sink.of_type("skipped") and not sink.of_type("warning")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cat.png", "report.json"]


# --- usable but odd files -----------------------------------------------------------------------------------------

def out_pixels(tmp_path, name):
    return np.asarray(Image.open(tmp_path / "out" / name))


def test_cmyk_jpeg(tmp_path):
    src = photo("coffee", (96, 64))
    record, _, _ = run_one(tmp_path, "print.jpg", jpeg_bytes(src.convert("CMYK")))
    assert record["status"] == "written" and "CMYK converted to RGB" in record["notes"]
    out = out_pixels(tmp_path, "print.png")
    assert out.shape == (64, 64, 3)
    expected = np.asarray(src.resize((96, 64)).crop((16, 0, 80, 64)), dtype=np.float64)
    assert np.abs(out.astype(np.float64) - expected).mean() < 20  # colours survive, not inverted


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 96, dtype=np.float64)[None, :].repeat(64, 0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    record, _, _ = run_one(tmp_path, "scan16.png", buf.getvalue())
    assert "16-bit image scaled to 8 bits" in record["notes"]
    out = out_pixels(tmp_path, "scan16.png")[:, :, 0].astype(int)
    assert out[:, 0].mean() < 80 and out[:, -1].mean() > 175  # a ramp, not a white image
    assert 110 < out.mean() < 145


def test_palette_with_transparency(tmp_path):
    pal = photo("coffee", (96, 64)).convert("P", palette=Image.ADAPTIVE, colors=16)
    arr = np.array(pal)
    arr[:, :48] = 0
    pal2 = Image.fromarray(arr, "P")
    pal2.putpalette(pal.getpalette())
    buf = io.BytesIO()
    pal2.save(buf, "PNG", transparency=0)
    record, _, _ = run_one(tmp_path, "pal.png", buf.getvalue())
    assert "transparency composited on the background colour" in record["notes"]
    out = out_pixels(tmp_path, "pal.png")
    assert np.abs(out[:, :20].astype(int) - GREY).max() <= 2  # the transparent half is neutral grey


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_neutral_grey(tmp_path, mode):
    img = photo("rocket", (96, 64)).convert(mode)
    arr = np.array(img)
    arr[:32, ..., -1] = 0  # top half transparent (over black or any colour: must not show)
    arr[:32, ..., 0] = 0
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    record, _, _ = run_one(tmp_path, "cut.png", buf.getvalue())
    out = out_pixels(tmp_path, "cut.png")
    assert np.abs(out[:28].astype(int) - GREY).max() <= 2
    assert out[40:].std() > 10  # the opaque half keeps the photo


def test_exif_orientation_applied(tmp_path):
    img = photo("rocket", (120, 80))  # landscape pixels, EXIF says rotate 90° CW for display: portrait result
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    record, _, _ = run_one(tmp_path, "phone.jpg", buf.getvalue(), width=64, height=96)
    assert record["size"] == [80, 120] and "EXIF orientation 6 applied" in record["notes"]
    out = out_pixels(tmp_path, "phone.png").astype(np.float64)
    expected = np.asarray(img.transpose(Image.ROTATE_270).resize((64, 96), Image.LANCZOS), dtype=np.float64)
    assert np.abs(out - expected).mean() < 8


def test_first_frame_of_an_animation(tmp_path):
    first, second = photo("coffee", (96, 64)), Image.new("RGB", (96, 64), (255, 0, 0))
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    record, _, _ = run_one(tmp_path, "anim.gif", buf.getvalue())
    assert "animation: used the first of 2 frames" in record["notes"]
    out = out_pixels(tmp_path, "anim.png")
    assert out[:, :, 0].mean() < 200 and out.std() > 20  # the coffee frame, not the red one


def test_wrong_and_upper_case_extensions_unicode_and_spaces(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    photo("coffee", (96, 64)).save(src / "really a png.jpg", "PNG")
    photo("rocket", (96, 64)).save(src / "SHOUT.JPEG", "JPEG")
    photo("china", (96, 64)).save(src / "façade 北京 photo.webp", "WEBP")
    photo("flower", (96, 64)).save(src / "noext", "PNG")
    report = run_preprocess(src, tmp_path / "out", OPTS, workers=1)
    assert sorted(report.written) == sorted(["really a png.png", "SHOUT.png", "façade 北京 photo.png", "noext.png"])
    assert report.skipped == []
    for name in report.written:
        assert Image.open(tmp_path / "out" / name).size == (64, 64)


def test_very_wide_panorama(tmp_path):
    pano = Image.fromarray(np.concatenate([np.asarray(photo(n, (400, 200))) for n in
                                           ("china", "coffee", "rocket", "flower", "chelsea")] * 4, axis=1))
    assert pano.size == (8000, 200)
    buf = io.BytesIO()
    pano.save(buf, "JPEG", quality=85)
    src_bytes = buf.getvalue()
    record, _, _ = run_one(tmp_path, "pano.jpg", src_bytes)
    assert record["outputs"][0]["image"] == "pano.png"
    (tmp_path / "out").rename(tmp_path / "out-default")
    import shutil

    shutil.rmtree(tmp_path / "src")
    record, _, _ = run_one(tmp_path, "pano.jpg", src_bytes, split=True, focal_crop=True)
    names = [o["image"] for o in record["outputs"]]
    assert len(names) == 50 + 1  # ceil((2560 - 12.8) / 51.2) split crops at 64 px, plus the focal crop
    assert names[0] == "pano-01.png" and names[49] == "pano-50.png" and names[-1] == "pano-focal.png"
    assert Image.open(tmp_path / "out" / "pano-focal.png").size == (64, 64)


def test_tiny_image_is_upscaled_with_a_warning(tmp_path):
    record, report, sink = run_one(tmp_path, "tiny.png", png_bytes(photo("astronaut", (24, 24))))
    assert record["status"] == "written"
    assert "enlarged 2.7×" in record["warnings"][0]
    assert any(e.get("file") == "tiny.png" and "smaller than 64×64" in e["message"] for e in sink.of_type("warning"))
    assert Image.open(tmp_path / "out" / "tiny.png").size == (64, 64)
    assert any("tiny.png" in w for w in report.warnings)


def test_a_slight_upscale_is_said_in_percent_and_not_warned(tmp_path):
    """Issue 25 item 14: 1600×500 for 512×512 is enlarged 2.4%: no "upscaled 1.0×" warning, only the record."""
    record, report, sink = run_one(tmp_path, "wide.png", png_bytes(photo("rocket", (200, 62))))
    assert record["status"] == "written" and record["upscaled"] == pytest.approx(64 / 62, abs=1e-3)
    assert "warnings" not in record
    assert not any(e.get("file") == "wide.png" for e in sink.of_type("warning"))
    assert not any("wide.png" in w for w in report.warnings)
    (tmp_path / "b").mkdir()
    record, report, sink = run_one(tmp_path / "b", "half.png", png_bytes(photo("rocket", (120, 40))))
    assert "enlarged by 60%" in record["warnings"][0]  # 64/40: said in percent below 2×
