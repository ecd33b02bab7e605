"""norm_mode in real training runs: every file a run writes (checkpoints, the final embedding, the resume state) keeps
the mode's promise, measured against figures taken from the model itself: clamp caps each vector at norm_clamp_k x
its encoder's vocabulary mean norm, preserve keeps each vector at its initial norm. Through a resume (bit for bit the
same as a straight run), a rollback to a checkpoint after NaN steps, the moving average (ema_decay), and for both of
SDXL's vector sets."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from core.embeddings.formats import load_embedding
from core.embeddings.vectors import init_vectors
from core.events import ListSink
from core.models.loader import load_model
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
K = 1.5
FAST = "0.05"  # free vectors grow far past K x the vocabulary mean within a few steps at this lr


def _encoders(model_dir):
    """[(key, tokenizer, encoder)] of the model, in the order of the trained parameter's columns."""
    model = load_model(model_dir, device="cpu")
    if model.family == "sdxl":
        return [("clip_l", model.tokenizer, model.text_encoder), ("clip_g", model.tokenizer_2, model.text_encoder_2)]
    return [("", model.tokenizer, model.text_encoder)]


def _expected(model_dir, init_text: str, n: int):
    """{key: (cap at K x the vocabulary mean norm, the init text's vector norms, width)} from the model's own
    weights."""
    out = {}
    for key, tokenizer, encoder in _encoders(model_dir):
        weight = encoder.get_input_embeddings().weight.detach().float()
        out[key] = (K * float(weight.norm(dim=1).mean()),
                    init_vectors(tokenizer, encoder, init_text, n).norm(dim=1), int(weight.shape[1]))
    return out


def _norms(path) -> dict:
    """{key: each vector's norm} of an embedding file (SDXL: per part)."""
    loaded = load_embedding(path)
    parts = loaded.parts or {"": loaded.vectors}
    return {key: vectors.float().norm(dim=1) for key, vectors in parts.items()}


def _state_norms(out, expected) -> dict:
    """{key: each vector's norm} of the raw vectors in state/latest.pt (what a resume continues from)."""
    vectors = torch.load(out / "state" / "latest.pt", weights_only=True)["vectors"].float()
    start, norms = 0, {}
    for key, (_, _, width) in expected.items():
        norms[key] = vectors[:, start:start + width].norm(dim=1)
        start += width
    return norms


def _files(out) -> list:
    return sorted((out / "embeddings").glob("*.safetensors")) + sorted(out.glob("*.safetensors"))


def _check(mode, norms: dict, expected: dict, where: str) -> None:
    for key, values in norms.items():
        cap, init, _ = expected[key]
        if mode == "clamp":
            assert float(values.max()) <= cap * (1 + 1e-5), (where, key, values, cap)
        else:
            assert torch.allclose(values, init, rtol=1e-5), (where, key, values, init)


def _run(model_dir, data, out, **changes):
    settings = dict(steps=6, save_every=2, lr=FAST, vectors=2, init_text="a dog", **changes)
    trainer = Trainer(tiny_config(model_dir, data, **settings), out, ListSink())
    return trainer, trainer.run()


@pytest.mark.parametrize("mode", ["clamp", "preserve"])
def test_every_saved_file_keeps_the_promise_sd1(tiny_model_dir, tmp_path, mode):
    data = make_images(tmp_path / "data", n=2)
    expected = _expected(tiny_model_dir, "a dog", 2)
    _run(tiny_model_dir, data, tmp_path / "free")
    free = _norms(tmp_path / "free" / "tcat.safetensors")[""]
    cap, init, _ = expected[""]
    assert float(free.max()) > 2 * cap and not torch.allclose(free, init, rtol=1e-2)  # the rule has work to do
    out = tmp_path / mode
    trainer, outcome = _run(tiny_model_dir, data, out, norm_mode=mode, norm_clamp_k=K)
    assert outcome.finished
    files = _files(out)
    assert len(files) == 4  # steps 2, 4, 6 and the final file
    for path in files:
        _check(mode, _norms(path), expected, path.name)
    _check(mode, _state_norms(out, expected), expected, "state")
    if mode == "clamp":
        assert float(_norms(out / "tcat.safetensors")[""].max()) == pytest.approx(cap, rel=1e-4)  # it binds
    else:
        moved = torch.nn.functional.cosine_similarity(load_embedding(out / "tcat.safetensors").vectors,
                                                      init_vectors(*_encoders(tiny_model_dir)[0][1:], "a dog", 2))
        assert float(moved.max()) < 0.999  # only the direction trained, and it did


@pytest.mark.parametrize("mode", ["clamp", "preserve"])
def test_resume_is_exact_and_keeps_the_promise(tiny_model_dir, tmp_path, mode):
    data = make_images(tmp_path / "data", n=2)
    expected = _expected(tiny_model_dir, "a dog", 2)
    settings = dict(steps=8, save_every=2, lr=FAST, vectors=2, init_text="a dog", norm_mode=mode, norm_clamp_k=K)
    Trainer(tiny_config(tiny_model_dir, data, **settings), tmp_path / "straight", ListSink()).run()
    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, **settings), split, ListSink())
    first.poll_commands = lambda: ["stop"] if first.session and first.session.step == 4 else []
    assert first.run().step == 4
    state = torch.load(split / "state" / "latest.pt", weights_only=True)
    assert state["norms"]["mode"] == mode
    Trainer(tiny_config(tiny_model_dir, data, **settings), split, ListSink()).run(resume=True)
    a, b = load_embedding(split / "tcat.safetensors").vectors, load_embedding(tmp_path / "straight" /
                                                                              "tcat.safetensors").vectors
    assert torch.equal(a, b)
    for path in _files(split):
        _check(mode, _norms(path), expected, path.name)


def test_rollback_to_a_checkpoint_keeps_the_promise(tiny_model_dir, tmp_path, monkeypatch):
    """Three NaN steps in a row roll the vectors back to the checkpoint at step 2 and halve the lr; every file
    written before and after keeps each vector at its initial norm."""
    data = make_images(tmp_path / "data", n=2)
    expected = _expected(tiny_model_dir, "a dog", 2)
    original, calls = UNet2DConditionModel.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        if calls["n"] in (3, 4, 5):  # steps 3, 4, 5 (one forward a step: no validation)
            out.sample = out.sample * float("nan")
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    sink = ListSink()
    settings = dict(steps=6, save_every=2, lr=FAST, vectors=2, init_text="a dog", norm_mode="preserve")
    trainer = Trainer(tiny_config(tiny_model_dir, data, **settings), tmp_path / "out", sink)
    assert trainer.run().finished
    assert any("rolled back to the checkpoint at step 2" in w["message"] for w in sink.of_type("warning"))
    for path in _files(tmp_path / "out"):
        _check("preserve", _norms(path), expected, path.name)
    _check("preserve", {"": trainer.session.vectors.detach().norm(dim=1)}, expected, "live vectors")


@pytest.mark.parametrize("mode", ["clamp", "preserve"])
def test_the_moving_average_keeps_the_promise(tiny_model_dir, tmp_path, mode):
    """With ema_decay the files hold the vectors' average: projected like the vectors (preserve), inside the ball
    (clamp)."""
    data = make_images(tmp_path / "data", n=2)
    expected = _expected(tiny_model_dir, "a dog", 2)
    out = tmp_path / "out"
    _run(tiny_model_dir, data, out, norm_mode=mode, norm_clamp_k=K, ema_decay=0.8)
    raw = torch.load(out / "state" / "latest.pt", weights_only=True)
    assert not torch.equal(raw["ema"]["average"], raw["vectors"])  # the files hold something else than the raw ones
    for path in _files(out):
        _check(mode, _norms(path), expected, path.name)


@pytest.mark.parametrize("mode", ["clamp", "preserve"])
def test_both_sdxl_sets_keep_the_promise(tiny_sdxl_dir, tmp_path, mode):
    data = make_images(tmp_path / "data", n=2)
    expected = _expected(tiny_sdxl_dir, "a dog", 2)
    out = tmp_path / mode
    settings = dict(steps=4, save_every=2, lr=FAST, vectors=2, init_text="a dog", norm_mode=mode, norm_clamp_k=K)
    assert Trainer(tiny_config(tiny_sdxl_dir, data, **settings), out, ListSink()).run().finished
    files = _files(out)
    assert len(files) == 3
    for path in files:
        norms = _norms(path)
        assert set(norms) == {"clip_l", "clip_g"}
        _check(mode, norms, expected, path.name)
    if mode == "clamp":  # each set against its own vocabulary: both bind
        final = _norms(out / "tcat.safetensors")
        for key in ("clip_l", "clip_g"):
            assert float(final[key].max()) == pytest.approx(expected[key][0], rel=1e-4), key
