"""A full disk (issue 13, item 2): the user reads "the disk is full" with the folder and the free space and the last
good checkpoint, never `basic_ios::clear: iostream error`; the run folder records the failure although status.json
cannot be rewritten on a full disk."""

import pytest

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from small_disk import fill_disk, small_disk  # noqa: F401 (fixture)
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_full_disk_during_a_checkpoint_is_reported_in_words(tiny_model_dir, tmp_path, small_disk):
    data = make_images(tmp_path / "data", n=2)
    out = small_disk / "run"
    sink = ListSink()
    trainer = Trainer(tiny_config(tiny_model_dir, data, steps=20, save_every=2), out, sink)
    trainer.poll_commands = lambda: (fill_disk(small_disk) and None) if trainer.session.step == 3 else []
    with pytest.raises(TiwizError) as err:
        trainer.run()
    message = str(err.value)
    assert "disk is full" in message, message
    assert str(out) in message and "free" in message
    assert "last good checkpoint is step 2" in message and "tiwiz resume" in message
    assert "iostream" not in message and "inline_container" not in message
    assert sink.of_type("error")[0]["message"] == message
    assert not [p for p in out.rglob("*.tmp")], "a temp file was left behind"


def test_torch_iostream_errors_on_a_full_disk_count_as_disk_full(small_disk, tmp_path):
    """torch.save on a full disk raises RuntimeError ("iostream error" / "inline_container"), without an errno."""
    import torch

    from core.diskspace import is_disk_full

    fill_disk(small_disk)
    with pytest.raises(Exception) as err:
        torch.save({"x": torch.zeros(1 << 20)}, small_disk / "big.pt")
    assert is_disk_full(err.value, small_disk)
    assert not is_disk_full(RuntimeError("basic_ios::clear: iostream error"), tmp_path)  # plenty of space there
