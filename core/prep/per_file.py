"""The per-file work of `tiwiz preprocess`, run in worker processes: load one source, make its output images, encode
them as PNG bytes. The parent names and writes them (so names are deterministic and never collide).

Everything here is picklable and never raises: a failure becomes `SourceResult.reason`.
"""

from __future__ import annotations

import io
import os
import time
import traceback
from dataclasses import dataclass, field

from PIL import Image, ImageOps

from core.prep.images import ImageRejected, load_rgb
from core.prep.options import PreprocessOptions

PNG_COMPRESS_LEVEL = 1  # photos barely compress: level 6 (Pillow's default) takes ~2.5× the time for ~8% smaller files


@dataclass
class SourceTask:
    index: int
    path: str
    options: PreprocessOptions
    detect_faces: bool = False  # look for faces even without focal crop (for the --flip warning)


@dataclass
class OutputImage:
    suffix: str  # appended to the source's output stem: "", "-2", "-focal", "-flip", ...
    png: bytes
    kind: str  # "crop", "split", "focal"
    flipped: bool = False
    # Where the output sits in the source, for SDXL's size conditioning: the crop's (left, top) in the source scaled to
    # cover the output size (None when unknown). The source's own size is SourceResult.size.
    crop_left_top: tuple[int, int] | None = None


@dataclass
class SourceResult:
    index: int
    path: str
    outputs: list[OutputImage] = field(default_factory=list)
    debug: list[tuple[str, bytes]] = field(default_factory=list)  # (suffix, png) focal debug images
    reason: str | None = None  # set when the source was skipped
    size: tuple[int, int] | None = None
    format: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    faces: int = 0
    upscale: float = 1.0
    timings: dict[str, float] = field(default_factory=dict)


def init_worker(in_pool: bool = False) -> None:
    """Each worker is one process on one core: keep OpenCV from starting its own thread pool. Pool workers ignore
    Ctrl-C: the parent handles it and cancels the queued work."""
    if in_pool:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def centre_crop_resize(img: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize_image mode 1 ("crop and resize"): scale to cover, then centre. Only the kept region is resampled,
    which gives the same pixels as resizing everything and cropping, faster."""
    return _centre_crop(img, width, height)[0]


def _centre_crop(img: Image.Image, width: int, height: int):
    """`centre_crop_resize`, plus the crop's (left, top) and the covering scaled width."""
    ratio = width / height
    src_ratio = img.width / img.height
    src_w = width if ratio > src_ratio else img.width * height // img.height
    src_h = height if ratio <= src_ratio else img.height * width // img.width
    sx, sy = src_w / img.width, src_h / img.height
    ox, oy = src_w // 2 - width // 2, src_h // 2 - height // 2
    box = (ox / sx, oy / sy, (ox + width) / sx, (oy + height) / sy)
    return img.resize((width, height), Image.LANCZOS, box=box, reducing_gap=3.0), (ox, oy), src_w


def process_source(task: SourceTask) -> SourceResult:
    result = SourceResult(task.index, task.path)
    cpu0 = time.process_time()
    try:
        _process(task, result)
    except ImageRejected as exc:
        result.reason = str(exc)
    except MemoryError:
        result.reason = "out of memory while processing this image"
    except Exception as exc:  # a per-file failure must never stop the run or show a traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.reason = (f"could not process: {type(exc).__name__}: {exc} "
                         f"(at {os.path.basename(where.filename)}:{where.lineno})")
    if result.reason:
        result.outputs, result.debug = [], []
    result.timings["cpu"] = time.process_time() - cpu0
    return result


def _process(task: SourceTask, result: SourceResult) -> None:
    from core.prep.focal import debug_image, detect_faces, focal_crop
    from core.prep.split import should_split, split_image

    opt = task.options
    W, H = opt.width, opt.height
    t0 = time.process_time()
    loaded = load_rgb(task.path, max_pixels=int(opt.max_megapixels * 1e6), background=opt.background_rgb,
                      min_size=(W, H))
    result.timings["load"] = time.process_time() - t0
    img = loaded.image
    result.size, result.format, result.notes = loaded.original_size, loaded.format, loaded.notes
    ow, oh = loaded.original_size
    result.upscale = max(W / ow, H / oh)

    made: list[tuple] = []  # (suffix, kind, image, (left, top, scaled width) or None)
    default_resize = True
    if opt.split and should_split(img.width, img.height, W, H, opt.split_threshold):
        from core.prep.split import plan_split

        crops = split_image(img, W, H, opt.split_overlap)
        plan = plan_split(img.width, img.height, W, H, opt.split_overlap)
        digits = len(str(len(crops)))
        made += [(f"-{i + 1:0{digits}d}", "split", c, (b[0], b[1], plan.resized[0]))
                 for i, (c, b) in enumerate(zip(crops, plan.boxes))]
        default_resize = False
    if opt.focal_crop and img.width != img.height:  # A1111: square images take the default crop
        t1 = time.process_time()
        focal = focal_crop(img, W, H, face_weight=opt.focal_face_weight, entropy_weight=opt.focal_entropy_weight,
                           edges_weight=opt.focal_edges_weight, keep_scaled=opt.focal_debug)
        result.timings["focal"] = time.process_time() - t1
        for name, seconds in focal.timings.items():
            result.timings[f"focal_{name}"] = seconds
        result.faces = focal.faces
        suffix = "-focal" if made else ""
        made.append((suffix, "focal", focal.crop, (focal.box[0], focal.box[1], focal.scaled_size[0])))
        if opt.focal_debug:
            result.debug.append((suffix, _png(debug_image(focal))))
        default_resize = False
    if default_resize:
        out, (left, top), scaled_w = _centre_crop(img, W, H)
        made.append(("", "crop", out, (left, top, scaled_w)))
    if task.detect_faces and "focal_face" not in result.timings:
        t1 = time.process_time()
        result.faces = len(detect_faces(img))
        result.timings["faces"] = time.process_time() - t1

    t1 = time.process_time()
    for suffix, kind, out, where in made:
        crop = (int(where[0]), int(where[1])) if where else None
        result.outputs.append(OutputImage(suffix, _png(out), kind, crop_left_top=crop))
        if opt.flip:
            mirrored = (int(where[2]) - int(where[0]) - out.width, int(where[1])) if where else None
            result.outputs.append(OutputImage(f"{suffix}-flip", _png(ImageOps.mirror(out)), kind, flipped=True,
                                              crop_left_top=mirrored))
    result.timings["encode"] = time.process_time() - t1
