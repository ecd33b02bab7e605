"""The editability signal in real runs: on every validation event (exactly 1.0 at step 0, from the init text), in
loss.csv, folded by the reducer, shown by `tiwiz inspect --run` (a real subprocess); an embedding started from its
init text scaled x20 reads far less editable than one started from the init text. And the preview prompt is rendered
at step 0, with the init vectors, before the first step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.embeddings.vectors import init_vectors, save_embedding
from core.events import ListSink
from core.models.loader import load_model
from core.runs.lossfile import read_loss_csv
from core.runs.run_state import RunState
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent


def _run(model_dir, data, out, **changes):
    sink = ListSink()
    settings = {**dict(steps=4, validate_every=2, lr="0.02", vectors=2, init_text="a dog"), **changes}
    Trainer(tiny_config(model_dir, data, **settings), out, sink).run()
    return sink


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_every_validation_carries_it_and_loss_csv_and_the_reducer_agree(tiny_model_dir, tiny_sdxl_dir, tmp_path,
                                                                      family):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    sink = _run(tiny_model_dir if family == "sd1" else tiny_sdxl_dir, data, out)
    validations = sink.of_type("validation")
    assert [v["step"] for v in validations] == [0, 2, 4]
    values = [v["editability"] for v in validations]
    assert values[0] == pytest.approx(1.0, abs=1e-6)  # the vectors are the init text's
    assert all(0 < v <= 1.0 + 1e-6 for v in values) and values[-1] < 1.0  # training moved them
    rows = {r["step"]: r["editability"] for r in read_loss_csv(out / "loss.csv")}
    assert [rows[s] for s in (0, 2, 4)] == pytest.approx(values, abs=1e-5)
    assert rows[1] is None and rows[3] is None  # only on validation steps
    state = RunState.fold(sink.events)
    assert [s for s, _ in state.editability] == [0, 2, 4] and state.last_editability == values[-1]


def test_an_embedding_scaled_x20_reads_less_editable(tiny_model_dir, tmp_path):
    """Two runs from init_from files: the init text's own vectors, and the same scaled x20. The step-0 validation
    measures each against the init text."""
    data = make_images(tmp_path / "data", n=2)
    model = load_model(tiny_model_dir, device="cpu")
    near = init_vectors(model.tokenizer, model.text_encoder, "a dog", 2)
    near = near + 0.02 * near.norm(dim=1, keepdim=True) * torch.randn(near.shape, generator=torch.Generator()
                                                                       .manual_seed(1)) / near.shape[1] ** 0.5
    files = {}
    for label, vectors in (("near", near), ("x20", near * 20)):
        files[label] = save_embedding(vectors, tmp_path / label, name="tcat", step=0, base_model="m", base_hash=None,
                                      init_text="a dog")[1]
    first = {}
    for label, path in files.items():
        sink = _run(tiny_model_dir, data, tmp_path / f"run-{label}", steps=2, init_from=str(path))
        first[label] = sink.of_type("validation")[0]["editability"]
    assert first["near"] > 0.99 and first["x20"] < 0.95 and first["near"] > first["x20"] + 0.05, first


def test_inspect_run_shows_the_editability_and_the_norm_mode(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    sink = _run(tiny_model_dir, data, out, save_every=2, norm_mode="clamp", norm_clamp_k=3.0)
    values = [v["editability"] for v in sink.of_type("validation")]
    cmd = [sys.executable, "-m", "core.cli", "inspect", "--run", str(out)]
    text = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "norm mode clamp (k 3)" in text.stdout
    assert f"step 0 {values[0]:.3f}" in text.stdout and f"step 4 {values[-1]:.3f}" in text.stdout
    assert "nearest tokens" in text.stdout  # the run's model was found and compared with
    data_json = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(data_json.stdout)
    assert [s for s, _ in report["run"]["editability"]] == [0, 2, 4]
    assert report["run"]["norm_mode"] == "clamp" and report["file"].endswith("tcat.safetensors")
    bad = subprocess.run([sys.executable, "-m", "core.cli", "inspect"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "--run RUN" in bad.stderr and "Traceback" not in bad.stderr


def test_the_preview_prompt_is_rendered_before_the_first_step(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    sink = _run(tiny_model_dir, data, out, steps=2, preview_every=2, preview_steps=2, validate_every=0)
    kinds = [(e["type"], e.get("step")) for e in sink.events if e["type"] in ("preview", "step")]
    assert kinds[0] == ("preview", 0) and kinds[1] == ("step", 1), kinds
    assert (out / "previews" / "tcat-0.png").is_file()
    assert [s for t, s in kinds if t == "preview"] == [0, 2]
