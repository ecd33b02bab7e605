"""The `.pt` tiwiz writes passes A1111's load-time checks (modules/safe.py, v1.10.1), reproduced here from its
documented behaviour: every zip entry must match the allow-list below, there must be exactly one `<root>/data.pkl`,
and that pickle may only reference a small set of globals. The file still loads with `torch.load(weights_only=True)`."""

from __future__ import annotations

import collections
import io
import pickle
import re
import zipfile

import pytest
import torch

from core.embeddings.a1111_pt import a1111_pt_bytes
from core.embeddings.vectors import save_embedding

ALLOWED = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
DATA_PKL = re.compile(r"^([^/]+)/data\.pkl$")
# The globals A1111's RestrictedUnpickler resolves (the ones a plain tensor dict can use).
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
}


class _A1111LikeUnpickler(pickle.Unpickler):
    def persistent_load(self, saved_id):
        assert saved_id[0] == "storage"
        return None

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return collections.OrderedDict if module == "collections" else (lambda *a, **k: None)
        raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")


def a1111_check(path) -> str:
    """Raise as A1111 would; return the archive's root folder."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        bad = [n for n in names if not ALLOWED.match(n)]
        if bad:
            raise AssertionError(f"bad file inside {path}: {bad[0]}")
        pkls = [n for n in names if DATA_PKL.match(n)]
        assert len(pkls) == 1, pkls
        with z.open(pkls[0]) as fh:
            _A1111LikeUnpickler(fh).load()
        return pkls[0].split("/")[0]


def test_plain_torch_save_fails_the_check_under_this_torch(tmp_path):
    """Guards the premise: if torch stops adding records this test says so (and the rewrite is merely harmless)."""
    path = tmp_path / "plain.pt"
    torch.save({"string_to_param": {"*": torch.zeros(2, 8)}}, path)
    names = zipfile.ZipFile(path).namelist()
    if all(ALLOWED.match(n) for n in names):
        pytest.skip(f"torch {torch.__version__} writes only A1111-allowed records")
    with pytest.raises(AssertionError, match="bad file inside"):
        a1111_check(path)


@pytest.mark.parametrize("name", ["my-style", "style v1.5", "ünï_cödé"])
def test_saved_pt_passes_a1111_and_loads_weights_only(tmp_path, name):
    vec = torch.randn(3, 8)
    pt, _ = save_embedding(vec, tmp_path / "emb", name=name, step=7, base_model="m", base_hash="abc", init_text="x")
    assert a1111_check(pt) == name  # the root folder is the embedding's name, not a temp file's
    data = torch.load(pt, weights_only=True)
    assert torch.equal(data["string_to_param"]["*"], vec)
    assert data["name"] == name and data["step"] == 7 and data["string_to_token"] == {"*": 265}
    mapped = torch.load(pt, weights_only=True, mmap=True)  # data records stay aligned
    assert torch.equal(mapped["string_to_param"]["*"], vec)


def test_entries_stay_uncompressed_and_aligned():
    blob = a1111_pt_bytes({"a": torch.arange(10.0), "b": torch.ones(4, 4, dtype=torch.float16)}, "x")
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            if "/data/" in info.filename:
                name_len, extra_len = int.from_bytes(blob[info.header_offset + 26:info.header_offset + 28], "little"), \
                    int.from_bytes(blob[info.header_offset + 28:info.header_offset + 30], "little")
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
    loaded = torch.load(io.BytesIO(blob), weights_only=True)
    assert torch.equal(loaded["a"], torch.arange(10.0)) and loaded["b"].dtype == torch.float16
