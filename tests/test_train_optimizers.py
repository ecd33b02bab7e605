"""`optimizer`: AdamW (default), Prodigy (optional package) and 8-bit AdamW (bitsandbytes + CUDA), with clear
messages where one cannot run."""

import sys

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training.optimizers import check_available, lr_warning, make_optimizer
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_is_torchs_with_no_weight_decay():
    p = torch.nn.Parameter(torch.zeros(2, 4))
    opt = make_optimizer("adamw", [p], 0.01)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.0


def test_missing_prodigy_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # what an uninstalled package looks like to import
    with pytest.raises(TiwizError, match=r"^optimizer: prodigy needs the prodigyopt package: pip install prodigyopt"):
        check_available("prodigy", "cpu")


def test_adamw8bit_needs_cuda():
    with pytest.raises(TiwizError, match=r"^optimizer: adamw8bit \(bitsandbytes\) needs a CUDA GPU"):
        check_available("adamw8bit", "cpu")


def test_missing_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(TiwizError, match="pip install bitsandbytes"):
        check_available("adamw8bit", "cuda")


def test_prodigy_lr_warning():
    assert lr_warning("prodigy", "0.005") and "lr 1" in lr_warning("prodigy", "0.005")
    assert lr_warning("prodigy", "1") is None and lr_warning("adamw", "0.005") is None


def test_prodigy_trains_and_resumes_exactly(tiny_model_dir, tmp_path):
    pytest.importorskip("prodigyopt")
    data = make_images(tmp_path / "data", n=2)
    opts = dict(optimizer="prodigy", lr="1", save_every=2, steps=4)
    straight = tmp_path / "straight"
    sink = ListSink()
    Trainer(tiny_config(tiny_model_dir, data, **opts), straight, sink).run()
    start = torch.load(straight / "embeddings" / "tcat-2.pt", weights_only=True)["string_to_param"]["*"]
    end = torch.load(straight / "tcat.pt", weights_only=True)["string_to_param"]["*"]
    assert not torch.equal(start, end)  # Prodigy moved the vectors
    state = torch.load(straight / "state" / "latest.pt", weights_only=True)
    assert "d" in state["optimizer"]["param_groups"][0]  # Prodigy's step-size estimate travels with the state

    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, **opts), split, ListSink())
    first.poll_commands = lambda: ["stop"] if first.step == 2 else []
    first.run()
    Trainer(tiny_config(tiny_model_dir, data, **opts), split, ListSink()).run(resume=True)
    again = torch.load(split / "tcat.pt", weights_only=True)["string_to_param"]["*"]
    torch.testing.assert_close(again, end, rtol=0, atol=1e-6)


def test_unknown_optimizer_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(TiwizError, match="^optimizer: must be one of adamw, prodigy, adamw8bit"):
        tiny_config(tiny_model_dir, tmp_path, optimizer="sgd")
