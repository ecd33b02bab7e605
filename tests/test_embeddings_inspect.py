"""`tiwiz inspect` and core.embeddings.inspect: nearest vocabulary tokens, norms against the vocabulary's, cosine
between two files, on every file layout tiwiz reads; and the trainer's checkpoint events carrying the same."""

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from core.embeddings.inspect import NORM_WARN_FACTOR, inspect_file, load_vocabularies
from core.embeddings.vectors import init_vectors, save_embedding
from core.errors import TiwizError

ROOT = Path(__file__).resolve().parent.parent
WORD = "lighthouse"


@pytest.fixture(scope="module")
def word_vectors(tiny_model_dir):
    """Two vectors initialised from the words 'lighthouse' and 'banana' (untrained), from the tiny model."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from core.models.loaded_model import bundled_tokenizer

    tok_dir = tiny_model_dir / "tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir) if tok_dir.is_dir() else bundled_tokenizer("sd1")
    encoder = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder")
    return init_vectors(tokenizer, encoder, f"{WORD} banana", 2)


def _png(path, vec):
    class Enc(json.JSONEncoder):
        def default(self, o):
            return {"TORCHTENSOR": o.tolist()} if isinstance(o, torch.Tensor) else super().default(o)

    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "pngemb", "step": 5}
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data, cls=Enc).encode()).decode())
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _write_all(folder: Path, vec) -> dict:
    folder.mkdir(exist_ok=True)
    pt, st = save_embedding(vec, folder / "ours", name="ours", step=0, base_model="tiny", base_hash=None,
                            init_text=WORD)
    files = {"a1111": pt, "diffusers": st}
    save_file({"emb_params": vec.contiguous()}, folder / "kohya.safetensors")
    files["kohya"] = folder / "kohya.safetensors"
    save_file({"emp_params": vec.contiguous()}, folder / "onetrainer.safetensors")
    files["onetrainer"] = folder / "onetrainer.safetensors"
    torch.save(vec.clone(), folder / "bare.pt")
    files["tensor"] = folder / "bare.pt"
    torch.save({"<tok>": vec.clone()}, folder / "learned_embeds.bin")
    files["diffusers-bin"] = folder / "learned_embeds.bin"
    files["a1111-png"] = _png(folder / "pngemb.png", vec)
    return files


def test_untrained_word_vector_is_nearest_to_its_word_in_every_format(tiny_model_dir, word_vectors, tmp_path):
    files = _write_all(tmp_path / "files", word_vectors)
    vocabs = load_vocabularies(tiny_model_dir)
    for fmt, path in files.items():
        report = inspect_file(path, k=3, vocabs=vocabs)
        part = report["parts"][""]
        assert part["nearest"][0][0][0] == WORD, fmt
        assert part["nearest"][0][0][1] == pytest.approx(1.0, abs=1e-4), fmt
        assert part["nearest"][1][0][0] == "banana", fmt
        assert part["norms"] == pytest.approx([float(v.norm()) for v in word_vectors], rel=1e-4)
        assert part["vocab_norms"]["p05"] <= part["vocab_norms"]["median"] <= part["vocab_norms"]["p95"]
        assert part["norm_warnings"] == []  # a vocabulary row is never far beyond the vocabulary


def test_norm_far_beyond_the_vocabulary_warns(tiny_model_dir, word_vectors, tmp_path):
    big = word_vectors.clone()
    big[1] *= 50
    _, st = save_embedding(big, tmp_path / "big", name="big", step=1, base_model="t", base_hash=None, init_text="")
    report = inspect_file(st, model=tiny_model_dir)
    part = report["parts"][""]
    median = part["vocab_norms"]["median"]
    assert part["norms"][1] > NORM_WARN_FACTOR * median
    assert len(part["norm_warnings"]) == 1 and part["norm_warnings"][0].startswith("vector 1 has norm")


def test_cosine_between_two_files(word_vectors, tmp_path):
    _, a = save_embedding(word_vectors, tmp_path / "a", name="a", step=1, base_model="t", base_hash=None,
                          init_text="")
    flipped = word_vectors.clone()
    flipped[1] = -flipped[1]
    b, _ = save_embedding(flipped, tmp_path / "b", name="b", step=1, base_model="t", base_hash=None, init_text="")
    report = inspect_file(a, other=b)
    cos = report["cosine"][""]
    assert cos["per_vector"] == pytest.approx([1.0, -1.0], abs=1e-5)
    expected = torch.nn.functional.cosine_similarity(word_vectors.mean(0), flipped.mean(0), dim=0)
    assert cos["mean_vector"] == pytest.approx(float(expected), abs=1e-5)
    assert report["parts"][""]["nearest"] is None  # no model given: norms only


def test_single_file_checkpoint_vocabulary(tiny_model_dir, tmp_path):
    """A single-file checkpoint: only the text encoder's token-embedding matrix is read."""
    from safetensors.torch import load_file

    te = load_file(str(tiny_model_dir / "text_encoder" / "model.safetensors"))
    key = next(k for k in te if k.endswith("token_embedding.weight"))
    ckpt = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer." + key: te[key], "model.diffusion_model.out.0.bias": torch.zeros(4)},
              ckpt)
    (vocab,) = load_vocabularies(ckpt)
    assert torch.equal(vocab.weight, te[key].float())
    assert vocab.tokens[49406] == "<|startoftext|>"


def test_width_mismatch_is_a_clear_error(tiny_model_dir, tmp_path):
    _, st = save_embedding(torch.randn(1, 768), tmp_path / "sd15", name="x", step=1, base_model="t", base_hash=None,
                           init_text="")
    with pytest.raises(TiwizError, match="768 wide"):
        inspect_file(st, model=tiny_model_dir)


def test_cli_prints_nearest_tokens(tiny_model_dir, word_vectors, tmp_path):
    pt, _ = save_embedding(word_vectors, tmp_path / "w", name="w", step=0, base_model="t", base_hash=None,
                           init_text=WORD)
    result = subprocess.run([sys.executable, "-m", "core.cli", "inspect", str(pt), "--model", str(tiny_model_dir),
                             "--top", "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"nearest tokens: {WORD} 1.00" in result.stdout
    assert "vocabulary norms: median" in result.stdout


def test_checkpoint_events_carry_norms_and_nearest_tokens(tiny_model_dir, tmp_path):
    from core.events import ListSink
    from core.runs import run_events as ev
    from core.training.trainer import Trainer
    from train_helpers import make_images, tiny_config

    torch.set_num_threads(1)
    data = make_images(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_model_dir, data, steps=2, save_every=1, lr="1e-6", init_text=WORD, vectors=1)
    sink = ListSink()
    Trainer(cfg, tmp_path / "run", sink).run()
    checkpoints = [e for e in (ev.parse(x) if isinstance(x, dict) else x for x in sink.events)
                   if isinstance(e, ev.Checkpoint)]
    assert [c.step for c in checkpoints] == [1, 2]
    first = checkpoints[0]
    assert first.nearest[0][0][0] == WORD  # lr 1e-6: still its init word
    assert first.vocab_median_norm > 0 and len(first.norms) == 1
    saved = torch.load(tmp_path / "run" / first.pt, weights_only=True)["string_to_param"]["*"]
    assert first.norms[0] == pytest.approx(float(saved[0].norm()), rel=1e-4)


def test_sdxl_file_has_both_parts_nearest_to_their_word(tiny_sdxl_dir, tmp_path):
    """An SDXL {clip_l, clip_g} file: each part against its own encoder's vocabulary."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from core.models.builtin import load_bundled_tokenizer

    te1 = CLIPTextModel.from_pretrained(tiny_sdxl_dir / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_dir / "text_encoder_2")
    vec_l = init_vectors(load_bundled_tokenizer(), te1, WORD, 1)
    vec_g = init_vectors(load_bundled_tokenizer(second=True), te2, WORD, 1)
    path = tmp_path / "xl.safetensors"
    save_file({"clip_l": vec_l.contiguous(), "clip_g": vec_g.contiguous()}, path)
    report = inspect_file(path, model=tiny_sdxl_dir, k=2)
    assert set(report["parts"]) == {"clip_l", "clip_g"}
    for label, vec in (("clip_l", vec_l), ("clip_g", vec_g)):
        part = report["parts"][label]
        assert part["dim"] == vec.shape[1] and part["nearest"][0][0][0] == WORD, label


def test_sdxl_ckpt_model_gives_both_vocabularies(tiny_sdxl_dir, tmp_path):
    """An SDXL .ckpt (a torch zip in the original layout, read with weights_only): clip_l and clip_g vocabularies,
    each the weights of its own encoder."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from core.models.single_file import save_single_file

    single = save_single_file(tiny_sdxl_dir, tmp_path / "xl.safetensors")
    ckpt = tmp_path / "xl.ckpt"
    torch.save({"state_dict": load_file(single)}, ckpt)
    vocabs = load_vocabularies(ckpt)
    assert [v.label for v in vocabs] == ["clip_l", "clip_g"]
    te1 = CLIPTextModel.from_pretrained(tiny_sdxl_dir / "text_encoder")
    te2 = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_dir / "text_encoder_2")
    for vocab, te in zip(vocabs, (te1, te2)):
        assert torch.equal(vocab.weight, te.get_input_embeddings().weight.detach().float())


def test_trainer_warns_once_when_a_norm_swamps_the_vocabulary(tiny_model_dir, tmp_path):
    from core.events import ListSink
    from core.runs import run_events as ev
    from core.training.trainer import Trainer
    from train_helpers import make_images, tiny_config

    torch.set_num_threads(1)
    data = make_images(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_model_dir, data, steps=3, save_every=1, lr="1", init_text=WORD, vectors=1)
    sink = ListSink()
    Trainer(cfg, tmp_path / "run", sink).run()
    events = [ev.parse(x) if isinstance(x, dict) else x for x in sink.events]
    checkpoints = [e for e in events if isinstance(e, ev.Checkpoint)]
    assert all(c.norms[0] > NORM_WARN_FACTOR * c.vocab_median_norm for c in checkpoints)  # lr 1: far too big
    warnings = [e for e in events if isinstance(e, ev.Warning) and "may swamp the rest of the prompt" in e.message]
    assert len(warnings) == 1 and warnings[0].step == 1 and warnings[0].message.startswith("vector 0 has norm")
