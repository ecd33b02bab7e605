"""Loading embeddings in every layout users bring, and refusing what is unsafe, foreign or broken."""

import base64
import io
import json
import pickle

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from core.embeddings.vectors import load_embedding, save_embedding
from core.errors import TiwizError


class _Evil:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_roundtrip_our_files(tmp_path):
    vec = torch.randn(4, 32)
    pt, st = save_embedding(vec, tmp_path / "zxq", name="zxq", step=12, base_model="tiny", base_hash="abc",
                            init_text="a red car")
    a = load_embedding(pt, expected_dim=32)
    assert (a.name, a.format, a.step, a.n_vectors, a.dim) == ("zxq", "a1111", 12, 4, 32)
    assert a.metadata == {"sd_checkpoint": "abc", "sd_checkpoint_name": "tiny"}
    assert torch.equal(a.vectors, vec)
    b = load_embedding(st)
    assert (b.name, b.format, b.step) == ("zxq", "diffusers", 12)
    assert b.metadata["init_text"] == "a red car" and b.metadata["base_model"] == "tiny"
    assert torch.equal(b.vectors, vec)


def test_a1111_file_as_webui_writes_it(tmp_path):
    vec = torch.randn(2, 32, requires_grad=True)  # A1111 saves its live parameter
    path = tmp_path / "mystyle-500.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "mystyle", "step": 499,
                "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned", "hash": "1a2b"}, path)
    e = load_embedding(path, expected_dim=32)
    assert (e.name, e.format, e.step) == ("mystyle", "a1111", 499)
    assert torch.equal(e.vectors, vec.detach()) and not e.vectors.requires_grad
    assert e.metadata["sd_checkpoint_name"] == "v1-5-pruned"


def test_a1111_with_two_params_refused(tmp_path):
    path = tmp_path / "two.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32), "&": torch.zeros(1, 32)}, "name": "two"}, path)
    with pytest.raises(TiwizError, match="exactly one"):
        load_embedding(path)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
def test_diffusers_token_dict(tmp_path, suffix):
    vec = torch.randn(3, 32)
    path = tmp_path / f"learned_embeds{suffix}"
    if suffix == ".safetensors":
        save_file({"<cat-toy>": vec}, path, metadata={"format": "pt"})
    else:
        torch.save({"<cat-toy>": vec}, path)
    e = load_embedding(path, expected_dim=32)
    assert (e.name, e.format, e.n_vectors) == ("<cat-toy>", "diffusers", 3)
    assert torch.equal(e.vectors, vec)


def test_old_diffusers_1d_fp16(tmp_path):
    vec = torch.randn(32).half()
    path = tmp_path / "learned_embeds.bin"
    torch.save({"<tok>": vec}, path)
    e = load_embedding(path)
    assert e.vectors.shape == (1, 32) and e.vectors.dtype == torch.float32
    assert torch.equal(e.vectors[0], vec.float())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_kohya_emb_params(tmp_path, suffix):
    vec = torch.randn(2, 32)
    path = tmp_path / f"kohya-style{suffix}"
    if suffix == ".safetensors":
        save_file({"emb_params": vec}, path, metadata={"ss_steps": "1500", "modelspec.title": "kohya-style"})
    else:
        torch.save({"emb_params": vec}, path)
    e = load_embedding(path, expected_dim=32)
    assert (e.name, e.format) == ("kohya-style", "kohya")
    assert e.step == (1500 if suffix == ".safetensors" else None)
    assert torch.equal(e.vectors, vec)


def test_onetrainer_emp_params(tmp_path):
    vec, out = torch.randn(3, 32), torch.randn(3, 32)
    path = tmp_path / "ot-embedding.safetensors"
    save_file({"emp_params": vec, "emp_params_out": out}, path)
    e = load_embedding(path, expected_dim=32)
    assert (e.name, e.format) == ("ot-embedding", "onetrainer")
    assert torch.equal(e.vectors, vec)


def test_bare_tensor(tmp_path):
    vec = torch.randn(2, 32)
    torch.save(vec, tmp_path / "bare.pt")
    e = load_embedding(tmp_path / "bare.pt")
    assert (e.name, e.format) == ("bare", "tensor") and torch.equal(e.vectors, vec)


def test_a1111_png_embedding(tmp_path):
    vec = torch.randn(2, 32)

    class Enc(json.JSONEncoder):
        def default(self, o):
            if isinstance(o, torch.Tensor):
                return {"TORCHTENSOR": o.cpu().numpy().tolist()}
            return super().default(o)

    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "pngstyle", "step": 99}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data, cls=Enc).encode()).decode())
    path = tmp_path / "pngstyle.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    e = load_embedding(path, expected_dim=32)
    assert (e.name, e.format, e.step) == ("pngstyle", "a1111-png", 99)
    assert torch.allclose(e.vectors, vec)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(TiwizError, match="without an embedding"):
        load_embedding(tmp_path / "plain.png")


def test_sdxl_refused_for_an_sd_width_and_read_when_inspecting(tmp_path):
    path = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, path)
    with pytest.raises(TiwizError, match="SDXL embedding.*this model is SD1/SD2"):
        load_embedding(path, expected_dim=768)
    torch.save({"clip_g": torch.ones(1, 1280), "clip_l": torch.zeros(1, 768)}, tmp_path / "xl.pt")
    emb = load_embedding(tmp_path / "xl.pt")  # no model given: the file is read as what it is
    assert emb.family == "sdxl" and emb.dim == 2048 and emb.parts["clip_g"].shape == (1, 1280)


def test_width_mismatch_names_both_widths(tmp_path):
    path = tmp_path / "sd2thing.safetensors"
    save_file({"sd2thing": torch.zeros(2, 1024)}, path)
    with pytest.raises(TiwizError) as err:
        load_embedding(path, expected_dim=768)
    assert "1024 (SD2.x)" in str(err.value) and "768 (SD1.x)" in str(err.value)
    with pytest.raises(TiwizError, match="1024 .* 32 wide"):
        load_embedding(path, expected_dim=32)
    assert load_embedding(path, expected_dim=1024).dim == 1024


def test_malicious_pickle_refused_without_running(tmp_path):
    # control: the payload really runs code when unpickled the unsafe way
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.read_text() == "pwned"

    marker = tmp_path / "marker"
    raw = tmp_path / "evil.pt"  # legacy (non-zip) pickle
    raw.write_bytes(pickle.dumps({"string_to_param": {"*": _Evil(marker)}, "name": "evil"}, protocol=2))
    zipped = tmp_path / "evil-zip.bin"  # torch's zip format, as torch.save writes it
    torch.save({"<tok>": _Evil(marker)}, zipped)
    disguised = tmp_path / "evil.safetensors"  # a pickle wearing a safetensors name
    disguised.write_bytes(zipped.read_bytes())
    for path in (raw, zipped, disguised):
        with pytest.raises(TiwizError, match="refused to load .*Nothing was executed") as err:
            load_embedding(path)
        assert "asks for exec" in str(err.value) and "safe_globals" not in str(err.value)
        assert not marker.exists()


def test_broken_and_foreign_files(tmp_path):
    vec = torch.randn(2, 32)
    pt, st = save_embedding(vec, tmp_path / "ok", name="ok", step=1, base_model="m", base_hash="h", init_text="")
    cut_st = tmp_path / "cut.safetensors"
    cut_st.write_bytes(st.read_bytes()[:-40])
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(pt.read_bytes()[: len(pt.read_bytes()) // 2])
    for path in (cut_st, cut_pt):
        with pytest.raises(TiwizError, match="corrupt or truncated"):
            load_embedding(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(TiwizError, match="empty"):
        load_embedding(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("hello there, not an embedding")
    with pytest.raises(TiwizError, match="not an embedding file"):
        load_embedding(tmp_path / "notes.txt")
    with pytest.raises(TiwizError, match="not found"):
        load_embedding(tmp_path / "missing.pt")
    with pytest.raises(TiwizError, match="folder"):
        load_embedding(tmp_path)

    model_like = tmp_path / "model.safetensors"
    save_file({f"layer{i}.weight": torch.zeros(2) for i in range(8)}, model_like)
    with pytest.raises(TiwizError, match="holds 8 tensors"):
        load_embedding(model_like)
    two = tmp_path / "two.pt"
    torch.save({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, two)
    with pytest.raises(TiwizError, match="keys: 'a', 'b'"):
        load_embedding(two)


def test_dead_and_odd_tensors_refused(tmp_path):
    nan = torch.zeros(2, 32)
    nan[0, 0] = float("inf")
    save_file({"dead": nan}, tmp_path / "dead.safetensors")
    with pytest.raises(TiwizError, match="NaN or infinite"):
        load_embedding(tmp_path / "dead.safetensors")
    save_file({"ints": torch.zeros(2, 32, dtype=torch.int64)}, tmp_path / "ints.safetensors")
    with pytest.raises(TiwizError, match="floating point"):
        load_embedding(tmp_path / "ints.safetensors")
    save_file({"cube": torch.zeros(2, 3, 32)}, tmp_path / "cube.safetensors")
    with pytest.raises(TiwizError, match="shape"):
        load_embedding(tmp_path / "cube.safetensors")
    save_file({"many": torch.zeros(76, 32)}, tmp_path / "many.safetensors")
    with pytest.raises(TiwizError, match="76 vectors"):
        load_embedding(tmp_path / "many.safetensors")
    buf = io.BytesIO()
    torch.save([torch.zeros(1, 32)], buf)
    (tmp_path / "list.pt").write_bytes(buf.getvalue())
    with pytest.raises(TiwizError, match="holds a list"):
        load_embedding(tmp_path / "list.pt")
