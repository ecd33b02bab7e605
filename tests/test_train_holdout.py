"""Hold-out: held-out images are never trained on, their validation loss is reported, and the suggested best step is
the argmin of that loss (with a checkpoint saved there to copy); loss.csv records it in `holdout_loss`."""

import pytest

from core.events import ListSink
from core.runs import run_events as ev
from core.runs.lossfile import read_loss_csv
from core.training.config import TrainConfig
from core.training.dataset import TrainDataset
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n, holdout, expected", [(7, -1, 0), (7, 3, 0), (8, -1, 1), (20, -1, 2), (50, -1, 4),
                                                  (50, 10, 10), (8, 0, 0), (8, 20, 7)])
def test_how_many_are_held_out(n, holdout, expected):
    assert TrainConfig(holdout=holdout).effective_holdout(n) == expected


def test_held_out_images_are_never_trained_on(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=10, size=(64, 64))
    trained: list[int] = []
    original = TrainDataset.latents

    def spy(self, indices, generator):
        trained.extend(indices)  # only training batches come here; validation brings its own latents
        return original(self, indices, generator)

    monkeypatch.setattr(TrainDataset, "latents", spy)
    cfg = tiny_config(tiny_model_dir, data, steps=12, batch_size=3, width=64, height=64, holdout=2,
                      validate_every=3, lr="0.05")
    sink = ListSink()
    trainer = Trainer(cfg, tmp_path / "run", sink)
    summary = trainer.run()
    held = set(trainer.session.holdout_indices)
    assert len(held) == 2 and len(trainer.session.train_indices) == 8
    assert trained and held.isdisjoint(trained)
    assert set(trained) == set(trainer.session.train_indices)  # 12 steps x 3 = 4.5 epochs: every image used
    events = [ev.parse(e) if isinstance(e, dict) else e for e in sink.events]
    started = next(e for e in events if isinstance(e, ev.Started))
    assert started.n_holdout == 2
    vals = [e for e in events if isinstance(e, ev.Validation)]
    assert [v.step for v in vals] == [0, 3, 6, 9, 12]
    assert all(v.holdout_loss is not None and v.holdout_loss > 0 for v in vals)
    # the held-out loss is its own figure, not the training images' loss
    assert any(v.holdout_loss != v.val_loss for v in vals)
    losses = [(v.holdout_loss, v.step) for v in vals]
    best = min(losses)[1]  # argmin (the first of equals)
    assert summary.best_step == best == vals[-1].best_step
    end = next(e for e in events if isinstance(e, (ev.Finished, ev.Stopped)))
    assert end.best_step == best
    assert end.best_basis == summary.best_basis == "holdout" and all(v.best_basis == "holdout" for v in vals)
    # loss.csv records the held-out loss beside the validation loss, on the validation steps only
    rows = read_loss_csv(tmp_path / "run" / "loss.csv")
    assert [(r["step"], r["holdout_loss"]) for r in rows if r["holdout_loss"] is not None] == \
           [(v.step, pytest.approx(v.holdout_loss, rel=1e-5)) for v in vals]
    assert all((r["holdout_loss"] is None) == (r["val_loss"] is None) for r in rows)
    if best > 0:
        assert end.best_checkpoint == f"embeddings/tcat-{best}.safetensors"
        assert (tmp_path / "run" / end.best_checkpoint).is_file()


def test_small_datasets_hold_nothing_out(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=4, size=(64, 64))
    cfg = tiny_config(tiny_model_dir, data, steps=2, width=64, height=64, holdout=2, validate_every=1)
    sink = ListSink()
    trainer = Trainer(cfg, tmp_path / "run", sink)
    trainer.run()
    assert trainer.session.holdout_indices == []
    events = [ev.parse(e) if isinstance(e, dict) else e for e in sink.events]
    assert any(isinstance(e, ev.Warning) and "holdout 2 ignored" in e.message for e in events)
    assert all(e.holdout_loss is None for e in events if isinstance(e, ev.Validation))
