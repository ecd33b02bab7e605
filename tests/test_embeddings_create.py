"""Creating and saving embeddings: names, trigger checks, A1111 init-text semantics, the two files we write."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

import core
from core.embeddings.vectors import (
    check_trigger, init_vectors, sanitize_name, save_embedding, trigger_problems,
)
from core.errors import TiwizError


@pytest.fixture(scope="module")
def clip(tiny_model_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder", local_files_only=True)
    return tokenizer, encoder


# ---- names ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, clean", [
    ("my-style_v1.2", "my-style_v1.2"),
    ("my style", "my style"),
    ("  spaced   out  ", "spaced out"),
    ("../../etc/passwd", "etcpasswd"),
    ("..\\..\\win\\sys", "winsys"),
    ("a..b...c", "a.b.c"),
    (".hidden", "hidden"),
    ("name.", "name"),
    ("-rf", "rf"),
    ("cat<>:|?*\"'!@#$%^&()=+[]{};,~`", "cat"),
    ("héllo wörld", "héllo wörld"),
])
def test_sanitize_name(raw, clean):
    assert sanitize_name(raw) == clean
    assert "/" not in clean and "\\" not in clean and ".." not in clean and not clean.startswith(".")


@pytest.mark.parametrize("raw", ["", "   ", "///", "...", "../..", "<>|"])
def test_sanitize_name_refuses_empty(raw):
    with pytest.raises(TiwizError, match="no usable characters"):
        sanitize_name(raw)


@pytest.mark.parametrize("raw", ["con", "NUL.v2", "com1", "Lpt9"])
def test_sanitize_name_refuses_windows_device_names(raw):
    with pytest.raises(TiwizError, match="reserved file name on Windows"):
        sanitize_name(raw)
    assert sanitize_name("x" + raw) == "x" + raw


def test_sanitize_name_refuses_too_long():
    assert sanitize_name("a" * 100) == "a" * 100
    with pytest.raises(TiwizError, match="100"):
        sanitize_name("a" * 101)


def test_trigger_checks(clip):
    tokenizer, _ = clip
    assert trigger_problems(tokenizer, "zxq-mystyle", n_vectors=4) == []
    assert "vocabulary" in trigger_problems(tokenizer, "cat")[0]
    # "Cat" is not a vocabulary key but encodes to the single token cat</w>: A1111 would hijack every "cat"
    (problem,) = trigger_problems(tokenizer, "Cat")
    assert "existing CLIP word 'cat'" in problem
    with pytest.raises(TiwizError, match="poor trigger"):
        check_trigger(tokenizer, "dog")
    check_trigger(tokenizer, "zxq-mystyle", 3)

    local = CLIPTokenizer.from_pretrained(tokenizer.name_or_path, local_files_only=True)
    local.add_tokens(["zxqfoo_1", "zxqfoo_2"])
    (problem,) = trigger_problems(local, "zxqfoo", n_vectors=3)
    assert "'zxqfoo_1', 'zxqfoo_2'" in problem
    # diffusers checks `name_1` even for single-vector embeddings
    assert trigger_problems(local, "zxqfoo", n_vectors=1)


def test_trigger_checks_without_torch_tokenizer(clip):
    tokenizer, _ = clip
    for name in ("cat", "Cat", "zxq-mystyle", "my style", "sunset", "a"):
        assert trigger_problems(None, name, 3) == trigger_problems(tokenizer, name, 3)
    assert trigger_problems(None, "Dog") and not trigger_problems(None, "zxq-dog")


def test_embeddings_import_is_torch_free():
    code = ("import sys; from core.embeddings.vectors import sanitize_name, trigger_problems; sanitize_name('x'); "
            "assert trigger_problems(None, 'cat'); "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'safetensors') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- init vectors -----------------------------------------------------------------------------------------------
def _rows(clip, tokens):
    tokenizer, encoder = clip
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in ids
    return encoder.get_input_embeddings().weight.detach()[ids]


def test_init_repeats_tokens(clip):
    tokenizer, encoder = clip
    vec = init_vectors(tokenizer, encoder, "a red car", 5)  # 3 tokens -> indices 0,0,1,1,2
    assert vec.shape == (5, 32) and vec.dtype == torch.float32
    assert torch.equal(vec, _rows(clip, ["a</w>", "a</w>", "red</w>", "red</w>", "car</w>"]))


def test_init_subsamples_tokens(clip):
    tokenizer, encoder = clip
    vec = init_vectors(tokenizer, encoder, "one two three four five", 2)  # 5 tokens -> indices 0,2
    assert torch.equal(vec, _rows(clip, ["one</w>", "three</w>"]))
    vec = init_vectors(tokenizer, encoder, "one two three four five", 3)  # -> 0,1,3
    assert torch.equal(vec, _rows(clip, ["one</w>", "two</w>", "four</w>"]))
    single = init_vectors(tokenizer, encoder, "one two three", 1)
    assert torch.equal(single, _rows(clip, ["one</w>"]))


def test_init_star_is_a1111_token_265(clip):
    tokenizer, encoder = clip
    assert tokenizer("*", add_special_tokens=False).input_ids == [265]
    vec = init_vectors(tokenizer, encoder, "*", 3)
    assert torch.equal(vec, encoder.get_input_embeddings().weight.detach()[[265, 265, 265]])


def test_init_empty_is_zeros_and_detached(clip):
    tokenizer, encoder = clip
    for text in ("", "   ", None):
        vec = init_vectors(tokenizer, encoder, text, 4)
        assert vec.shape == (4, 32) and not vec.any()
    row = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("cat</w>")].detach().clone()
    vec = init_vectors(tokenizer, encoder, "cat", 1)
    assert not vec.requires_grad and torch.equal(vec[0], row)
    vec += 1  # a copy: the text encoder's table is untouched
    assert torch.equal(encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("cat</w>")], row)


def test_init_long_text_and_limits(clip):
    tokenizer, encoder = clip
    long_text = " ".join(["red", "blue"] * 60)  # 120 tokens, past one chunk: no truncation
    vec = init_vectors(tokenizer, encoder, long_text, 75)
    assert vec.shape == (75, 32)
    assert torch.equal(vec[74], _rows(clip, ["red</w>" if (74 * 120 // 75) % 2 == 0 else "blue</w>"])[0])
    for bad in (0, 76, -1, 2.0, "3", True):
        with pytest.raises(TiwizError, match="1 to 75"):
            init_vectors(tokenizer, encoder, "cat", bad)


# ---- saving -----------------------------------------------------------------------------------------------------
def _save(stem, vec, **kw):
    args = dict(name="zxq", step=42, base_model="tiny-model", base_hash="0123456789", init_text="a red car")
    args.update(kw)
    return save_embedding(vec, stem, **args)


def test_save_writes_a1111_pt(tmp_path):
    vec = torch.randn(3, 32)
    pt, st = _save(tmp_path / "out" / "zxq", vec)
    assert pt == tmp_path / "out" / "zxq.pt" and st == tmp_path / "out" / "zxq.safetensors"
    data = torch.load(pt, weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert list(data["string_to_param"]) == ["*"]
    assert torch.equal(data["string_to_param"]["*"], vec) and data["string_to_param"]["*"].shape == (3, 32)
    assert data["name"] == "zxq" and data["step"] == 42 and type(data["step"]) is int
    assert data["sd_checkpoint"] == "0123456789" and data["sd_checkpoint_name"] == "tiny-model"
    assert sorted(os.listdir(tmp_path / "out")) == ["zxq.pt", "zxq.safetensors"]  # no temp files left


def test_save_writes_single_tensor_safetensors(tmp_path):
    _, st = _save(tmp_path / "zxq", torch.randn(32, dtype=torch.float16), step=7, init_text="")  # 1-D, fp16
    with safe_open(str(st), framework="pt") as fh:
        assert list(fh.keys()) == ["zxq"]
        tensor = fh.get_tensor("zxq")
        meta = fh.metadata()
    assert tensor.shape == (1, 32) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert meta["base_model"] == "tiny-model" and meta["base_model_hash"] == "0123456789"
    assert meta["step"] == "7" and meta["vectors"] == "1" and meta["init_text"] == ""
    assert meta["tiwiz_version"] == core.__version__


def test_save_keeps_dots_in_the_stem(tmp_path):
    pt, st = _save(tmp_path / "style-v1.5", torch.zeros(1, 32), name="style-v1.5")
    assert (pt.name, st.name) == ("style-v1.5.pt", "style-v1.5.safetensors")


def test_save_view_does_not_drag_storage(tmp_path):
    big = torch.randn(5000, 32)
    pt, st = _save(tmp_path / "v", big[10:12])
    assert pt.stat().st_size < 8000 and st.stat().st_size < 2000
    assert torch.equal(torch.load(pt, weights_only=True)["string_to_param"]["*"], big[10:12])


def test_overwrite_needs_flag(tmp_path):
    first = torch.zeros(2, 32)
    pt, st = _save(tmp_path / "zxq", first)
    before = (pt.read_bytes(), st.read_bytes())
    with pytest.raises(TiwizError, match="already exists"):
        _save(tmp_path / "zxq", torch.ones(2, 32))
    assert (pt.read_bytes(), st.read_bytes()) == before
    st.unlink()  # one of the pair is enough to refuse
    with pytest.raises(TiwizError, match="already exists"):
        _save(tmp_path / "zxq", torch.ones(2, 32))
    assert pt.read_bytes() == before[0] and not st.exists()
    _save(tmp_path / "zxq", torch.ones(2, 32), overwrite=True)
    assert torch.equal(torch.load(pt, weights_only=True)["string_to_param"]["*"], torch.ones(2, 32))


def test_save_refuses_bad_vectors_and_keeps_last_good(tmp_path):
    pt, _ = _save(tmp_path / "zxq", torch.zeros(2, 32))
    good = pt.read_bytes()
    bad = torch.zeros(2, 32)
    bad[1, 3] = float("nan")
    with pytest.raises(TiwizError, match="NaN"):
        _save(tmp_path / "zxq", bad, overwrite=True)
    assert pt.read_bytes() == good
    with pytest.raises(TiwizError, match="shape"):
        _save(tmp_path / "x", torch.zeros(2, 3, 4))
    with pytest.raises(TiwizError, match="tensor"):
        _save(tmp_path / "x", [[0.0] * 32])
    with pytest.raises(TiwizError, match="name"):
        _save(tmp_path / "x", torch.zeros(1, 32), name=" ")
