"""Safe image loading for preprocessing: one RGB image from any file a user may drop in a folder, or a clear reason.

`load_rgb(path, ...)` returns a `LoadedImage` or raises `ImageRejected(reason)`. It applies the EXIF orientation,
takes the first frame of animations, scales 16-bit and float data into 8 bits (Pillow's own convert clips them to
white), composites alpha (RGBA, LA, palette transparency) on a neutral background, and guards against decompression
bombs by checking the header's pixel count before decoding anything. Preprocessing, the trainer's dataset, BLIP
captioning and the wizard's preview all load images through it, so they all see the same pixels.

Transparency is composited on `TRANSPARENT_BACKGROUND`, mid-grey #808080, everywhere (preprocessing's
`--background` may choose another colour for the images it writes). Grey is 0 in the [-1, 1] pixel range the VAE
encodes, the mean of the training images' pixel distribution, so transparent areas pull the learned concept
towards neither a white nor a black backdrop; a white backdrop would be learned as part of a sticker or product
shot concept, and Pillow's plain `convert("RGB")` would show whatever colour the transparent pixels happen to hold.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRANSPARENT_BACKGROUND = (128, 128, 128)  # see the module docstring
DEFAULT_MAX_PIXELS = 120_000_000  # the decompression-bomb guard, as `--max-megapixels`' default
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


class ImageRejected(Exception):
    """This file cannot be used; `str(exc)` is the reason shown to the user."""


@dataclass
class LoadedImage:
    image: Image.Image  # RGB
    original_size: tuple[int, int]  # (w, h) after EXIF orientation, before any draft downscale
    format: str
    notes: list[str] = field(default_factory=list)  # what was done to make it usable (alpha, 16-bit, frames, ...)


def sniff_unsupported(path: Path, head: bytes) -> str | None:
    """A reason for formats we recognise but do not decode (HEIC/HEIF, SVG), else None."""
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return ("HEIC/HEIF photo (iPhone format) is not supported; export it as JPEG or PNG first "
                "(on a Mac: Preview > Export, or set Camera > Formats > Most Compatible)")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if path.suffix.lower() in (".svg", ".svgz") or text.startswith(b"<svg") or (
            text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "SVG is a vector format; export it to PNG at the size you want first"
    return None


def check_png_crc(data: bytes) -> str | None:
    """Walk a PNG's chunks and verify each CRC (Pillow does not check IDAT's). Returns a reason or None."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length + 4
        if end > len(data):
            return None  # truncated: the decoder reports it with a better reason
        stored = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[pos + 4:pos + 8 + length]) & 0xFFFFFFFF != stored:
            name = ctype.decode("latin-1", "replace")
            return f"corrupt PNG: bad CRC in the {name} chunk (the file was damaged in transfer or on disk)"
        if ctype == b"IEND":
            return None
        pos = end
    return None


def _to_8bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """Scale 16-bit integer and float modes into "L" instead of clipping them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        notes.append("16-bit image scaled to 8 bits" if top > 255 else "32-bit integer image converted")
        return Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        notes.append("floating-point image scaled to 8 bits")
        return Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = TRANSPARENT_BACKGROUND,
           notes: list[str] | None = None) -> Image.Image:
    """Any Pillow mode to RGB; transparency composited on `background`."""
    notes = [] if notes is None else notes
    img = _to_8bit(img, notes)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparency composited on the background colour")
        base = Image.new("RGBA", rgba.size, background + (255,))
        base.alpha_composite(rgba)
        return base.convert("RGB")
    if img.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, background=TRANSPARENT_BACKGROUND,
             min_size: tuple[int, int] | None = None) -> LoadedImage:
    """Decode `path` to RGB. `min_size` (w, h) lets JPEG decode at a reduced scale that still covers that size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageRejected("empty file (0 bytes)")
        with open(path, "rb") as fh:
            data = fh.read()
    except ImageRejected:
        raise
    except OSError as exc:
        raise ImageRejected(f"cannot read the file: {exc.strerror or exc}") from None
    reason = sniff_unsupported(path, data[:512])
    if reason:
        raise ImageRejected(reason)
    if data.startswith(PNG_SIGNATURE):
        reason = check_png_crc(data)
        if reason:
            raise ImageRejected(reason)

    import io

    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # we enforce our own pixel limit below; Pillow's warning would only be noise
        saved_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError:
                raise ImageRejected("not an image (the content is not a format Pillow can read)") from None
            except (SyntaxError, ValueError, struct.error, OSError) as exc:
                raise ImageRejected(f"corrupt image header: {exc}") from None
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageRejected("image has zero width or height")
            if w * h > max_pixels:
                raise ImageRejected(f"too large: {w}×{h} = {w * h / 1e6:.0f} megapixels exceeds the "
                                    f"{max_pixels / 1e6:.0f} MP limit (possible decompression bomb; raise "
                                    "--max-megapixels if the image is genuine)")
            fmt = img.format or "?"
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
                notes.append(f"animation: used the first of {img.n_frames} frames")
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:
                orientation = 1
            if min_size and fmt == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the output in either orientation.
                need = max(min_size[0] / min(w, h), min_size[1] / min(w, h), min_size[0] / w, min_size[1] / h)
                if need < 0.5:
                    img.draft("RGB", (int(w * need) + 1, int(h * need) + 1))
            try:
                img.load()
            except OSError as exc:
                msg = str(exc)
                if "truncated" in msg or "broken data stream" in msg or "unrecognized data stream" in msg:
                    raise ImageRejected("truncated file: the image data ends early (incomplete download or copy?)") \
                        from None
                raise ImageRejected(f"cannot decode the image: {msg}") from None
            except (SyntaxError, ValueError, struct.error, EOFError, zlib.error) as exc:
                raise ImageRejected(f"corrupt image data: {exc}") from None
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                try:
                    img = ImageOps.exif_transpose(img)
                    notes.append(f"EXIF orientation {orientation} applied")
                except Exception:
                    notes.append("EXIF orientation could not be applied")
            original = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            rgb = to_rgb(img, tuple(background), notes)
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit
    return LoadedImage(rgb, original, fmt, notes)
