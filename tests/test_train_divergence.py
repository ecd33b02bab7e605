"""The NaN rollback never keeps a poisoned state (issue 13, item 11): a finite step that blows the vectors up far past
the vocabulary's norms is rolled back like a NaN; repeated failures roll back to the last checkpoint and halve the
lr; the warnings and the error name the same step."""

import re

import pytest

from core.errors import TiwizError
from core.events import ListSink
from core.training.guard import NORM_LIMIT_FACTOR
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _limit(trainer) -> float:
    weight = trainer.session.model.text_encoder.get_input_embeddings().weight.detach()
    return NORM_LIMIT_FACTOR * float(weight.norm(dim=1).max())


def test_a_huge_lr_never_keeps_blown_up_vectors(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    sink = ListSink()
    trainer = Trainer(tiny_config(tiny_model_dir, data, steps=3, lr="10", max_nan_steps=20), tmp_path / "out", sink)
    summary = trainer.run()
    assert summary.finished and summary.step == 3
    assert float(trainer.session.vectors.detach().norm(dim=1).max()) <= _limit(trainer)
    messages = [w["message"] for w in sink.of_type("warning")]
    assert any("norm reached" in m for m in messages), messages
    assert any("rolled back to the checkpoint at step 0" in m and "halved" in m for m in messages), messages
    lrs = [e["lr"] for e in sink.of_type("step")]
    assert lrs and max(lrs) < 10


def test_the_warnings_and_the_error_name_the_same_step(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    sink = ListSink()
    with pytest.raises(TiwizError) as err:
        Trainer(tiny_config(tiny_model_dir, data, steps=5, lr="10", max_nan_steps=2), tmp_path / "out", sink).run()
    steps = {int(re.search(r"at step (\d+)", w["message"]).group(1)) for w in sink.of_type("warning")
             if "at step" in w["message"]}
    assert steps == {int(re.search(r"at step (\d+)", str(err.value)).group(1))}, (steps, str(err.value))


def test_a_run_diverging_before_its_first_checkpoint_says_none_was_saved(tiny_model_dir, tmp_path):
    """Issue 25, item 38: a run that diverges at step 1 has no checkpoint in embeddings/: the error says so and what to
    change, never that a last good checkpoint is intact."""
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    with pytest.raises(TiwizError) as err:
        Trainer(tiny_config(tiny_model_dir, data, steps=5, lr="10", max_nan_steps=1, save_every=2), out,
                ListSink()).run()
    message = str(err.value)
    assert "at step 1" in message, message
    assert not list((out / "embeddings").glob("*")), "nothing was saved before step 1"
    assert "intact" not in message, message
    assert "no checkpoint was saved" in message.lower() and "lower the learning rate (lr)" in message, message
