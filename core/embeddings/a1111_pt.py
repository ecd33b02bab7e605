"""Write a torch `.pt` that A1111's loader accepts, whatever records the installed torch adds.

A1111 (`modules/safe.py`) checks every zip entry against an allow-list before unpickling: `<root>/data.pkl`,
`<root>/version`, `<root>/byteorder`, `<root>/.data/serialization_id` and `<root>/data/<n>`. torch 2.6+ also writes
`.format_version` and `.storage_alignment`, and A1111 then refuses the file ("bad file inside"). torch.load does not
need those two records, so the archive is rewritten without them, and its root folder is named after the embedding
(torch names it after the file it writes, which for an atomic write is a temp file). Data records stay uncompressed
and 64-byte aligned, as torch writes them, so `torch.load(mmap=True)` still works.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile

# The entries A1111 v1.10 lets through (modules/safe.py); older versions accept a subset, see KEEP_SUFFIXES.
A1111_ALLOWED_ENTRY = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
_KEEP = re.compile(r"^((data/\d+)|version|byteorder|\.data/serialization_id|data\.pkl)$")
_ALIGN = 64
_PAD_HEADER_ID = 0x4246  # the "FB" padding field torch itself uses for alignment


def archive_root(name: str) -> str:
    """The zip root folder for an embedding called `name`: its name, minus anything a zip path cannot hold."""
    root = re.sub(r"[/\\\x00-\x1f]", "_", str(name)).strip() or "embedding"
    return root


def a1111_pt_bytes(obj, name: str) -> bytes:
    """`torch.save(obj)` as bytes, with only A1111-allowed records and the root folder `archive_root(name)`."""
    import torch

    raw = io.BytesIO()
    torch.save(obj, raw)
    root = archive_root(name)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            _, _, rel = info.filename.partition("/")
            if not _KEEP.match(rel):
                continue
            data = src.read(info)
            entry = zipfile.ZipInfo(f"{root}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_STORED
            entry.external_attr = 0o644 << 16
            if rel.startswith("data/"):
                entry.extra = _alignment_padding(out.tell(), entry)
            dst.writestr(entry, data)
    return out.getvalue()


def _alignment_padding(offset: int, entry: zipfile.ZipInfo) -> bytes:
    """An extra field that puts the entry's data at a multiple of _ALIGN (local header is 30 bytes + name + extra)."""
    name_len = len(entry.filename.encode("utf-8"))
    start = offset + 30 + name_len + 4  # 4 = the extra field's own header
    pad = (-start) % _ALIGN
    return struct.pack("<HH", _PAD_HEADER_ID, pad) + b"Z" * pad


def save_a1111_pt(obj, path: str | os.PathLike, name: str):
    """Write `obj` to `path` atomically as an A1111-loadable `.pt` whose archive root is the embedding's name."""
    from core.atomic import atomic_write_bytes

    return atomic_write_bytes(path, a1111_pt_bytes(obj, name))
