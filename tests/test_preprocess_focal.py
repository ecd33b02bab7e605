"""Focal-point crop on real photos: a face on one side of a wide canvas is kept where a centre crop loses it."""

import numpy as np
import pytest
from PIL import Image

from core.errors import TiwizError
from core.prep.focal import debug_image, detect_faces, face_box, focal_crop
from core.prep.preprocess import run_preprocess
from core.prep.options import PreprocessOptions
from tests.preprocess_cases import photo


def wide_canvas(side: str) -> Image.Image:
    """768x256: a smooth grey gradient with the astronaut photo pasted at one end."""
    ramp = np.linspace(40, 110, 768, dtype=np.float64)[None, :, None].repeat(256, 0).repeat(3, 2)
    canvas = Image.fromarray(ramp.astype(np.uint8))
    canvas.paste(photo("astronaut", (256, 256)), (0 if side == "left" else 512, 0))
    return canvas


def test_haar_finds_the_astronaut_and_no_faces_in_other_photos():
    faces = detect_faces(photo("astronaut"))
    assert len(faces) == 1
    assert 177 < faces[0].x < 177 + 93 and 67 < faces[0].y < 67 + 93  # the known face box
    for name in ("coins", "chelsea", "coffee", "rocket", "china", "flower"):
        assert detect_faces(photo(name)) == [], name


@pytest.mark.parametrize("side", ["left", "right"])
def test_focal_crop_keeps_the_face_a_centre_crop_loses(tmp_path, side):
    src = tmp_path / "src"
    src.mkdir()
    wide_canvas(side).save(src / "wide.png")
    size = dict(width=256, height=256)
    centre = run_preprocess(src, tmp_path / "centre", PreprocessOptions(**size), workers=1)
    focal = run_preprocess(src, tmp_path / "focal", PreprocessOptions(**size, focal_crop=True, focal_debug=True),
                           workers=1)
    assert centre.written == ["wide.png"] and focal.written == ["wide.png"]
    centre_img = Image.open(tmp_path / "centre" / "wide.png")
    focal_img = Image.open(tmp_path / "focal" / "wide.png")
    assert centre_img.size == focal_img.size == (256, 256)
    assert detect_faces(centre_img) == []
    assert len(detect_faces(focal_img)) == 1
    assert focal.sources[0]["faces"] == 1
    debug = Image.open(tmp_path / "focal" / "focal-debug" / "wide.png").convert("RGB")
    assert debug.size == (768, 256)  # the whole scaled image, with the crop drawn in green
    px = np.asarray(debug)
    assert ((px[:, :, 1] == 255) & (px[:, :, 0] == 0) & (px[:, :, 2] == 0)).sum() > 500


def test_weight_zero_turns_a_detector_off():
    img = wide_canvas("right")
    full = focal_crop(img, 256, 256)
    assert set(full.points) == {"edges", "entropy", "face"} and full.faces == 1
    no_face = focal_crop(img, 256, 256, face_weight=0)
    assert "face" not in no_face.points and "face" not in no_face.timings and no_face.faces == 0
    only_face = focal_crop(img, 256, 256, entropy_weight=0, edges_weight=0)
    assert set(only_face.points) == {"face"}
    face = only_face.points["face"][0]
    assert only_face.box[0] <= face.x <= only_face.box[2]
    # A1111 weighting: each non-empty set's centroid weighs w_i / sum(w of non-empty sets).
    weights = {k: c.weight for k, c in full.centroids.items()}
    total = 0.9 + 0.15 + 0.5
    assert weights == pytest.approx({"face": 0.9 / total, "entropy": 0.15 / total, "edges": 0.5 / total})


def test_no_points_centres_the_crop_instead_of_the_corner():
    flat = Image.new("RGB", (600, 200), (90, 90, 90))
    result = focal_crop(flat, 200, 200, entropy_weight=0)
    assert not result.centroids
    assert result.box == (200, 0, 400, 200)


def test_non_square_target_on_a_nearly_square_image_is_covered():
    # A1111 scaled a landscape image by crop_height/height, leaving it narrower than a wide crop.
    result = focal_crop(photo("hubble_deep_field", (500, 440)), 384, 256)
    assert result.crop.size == (384, 256)
    assert result.scaled_size[0] >= 384 and result.scaled_size[1] >= 256


def test_all_weights_zero_is_refused():
    with pytest.raises(TiwizError, match="non-zero weight"):
        PreprocessOptions(focal_crop=True, focal_face_weight=0, focal_entropy_weight=0,
                          focal_edges_weight=0).validate()


def face_beside_busy(where: str, tall: bool) -> Image.Image:
    """A 1024x256 (or 256x1024) flat canvas: the astronaut (240 px) at the start, middle or end, and the busy coins
    flower photo filling the far end (or, for a face in the middle, one end), which pulls A1111's mean off the face."""
    long, short, face_side = 1024, 256, 240
    canvas = Image.new("RGB", (long, short) if not tall else (short, long), (70, 72, 75))
    face_at = {"start": 10, "middle": 400, "end": long - face_side - 10}[where]
    busy_len = 330
    busy_at = long - busy_len if where != "end" else 0
    flower = photo("flower").convert("RGB")  # 640x427, a crop of it: petals everywhere, no faces
    busy = flower.crop((0, 0, busy_len, short) if not tall else (0, 0, short, busy_len))
    canvas.paste(busy, (busy_at, 0) if not tall else (0, busy_at))
    off = (short - face_side) // 2
    canvas.paste(photo("astronaut", (face_side, face_side)), (face_at, off) if not tall else (off, face_at))
    return canvas


@pytest.mark.parametrize("tall", [False, True], ids=["wide", "tall"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_face_beside_a_busy_region_is_kept_whole(tall, where):
    img = face_beside_busy(where, tall)
    result = focal_crop(img, 256, 256, keep_scaled=True)
    assert result.faces == 1, "the detector must see the face for this case to mean anything"
    fx1, fy1, fx2, fy2 = face_box(result.points["face"][0])
    x1, y1, x2, y2 = result.box
    assert x1 <= fx1 and y1 <= fy1 and fx2 <= x2 and fy2 <= y2, (result.box, (fx1, fy1, fx2, fy2))
    assert result.faces_kept == 1 and 0 < result.score <= 1
    assert len(detect_faces(result.crop)) == 1
    debug = debug_image(result)  # the chosen window and its score are drawn
    assert debug.size == result.scaled.size


def test_several_faces_keep_the_largest_whole():
    canvas = Image.new("RGB", (1024, 256), (70, 72, 75))
    canvas.paste(photo("astronaut", (230, 230)).transpose(Image.FLIP_LEFT_RIGHT), (20, 13))
    canvas.paste(photo("astronaut", (256, 256)), (760, 0))
    result = focal_crop(canvas, 256, 256)
    assert result.faces == 2
    big = max(result.points["face"], key=lambda p: p.size)
    fx1, _, fx2, _ = face_box(big)
    assert result.box[0] <= fx1 and fx2 <= result.box[2]

