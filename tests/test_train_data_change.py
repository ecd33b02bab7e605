"""A data folder changed between a kill and the resume (issue 13, item 7): the resume says what changed and refuses
unless allowed; allowed, it trains on the folder as it is now (even cut to one image, no IndexError)."""

import pytest

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _first_run(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=4)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=2, save_every=2, batch_size=2), out, ListSink()).run()
    return data, out


def test_resume_refuses_a_changed_data_folder_and_says_what_changed(tiny_model_dir, tmp_path):
    data, out = _first_run(tiny_model_dir, tmp_path)
    (data / "001-img.png").unlink()
    (data / "002-img.txt").write_text("a new caption")
    with pytest.raises(TiwizError) as err:
        Trainer(tiny_config(tiny_model_dir, data, steps=4, batch_size=2), out, ListSink()).run(resume=True)
    message = str(err.value)
    assert "001-img.png" in message and "removed" in message, message
    assert "002-img.txt" in message and "changed" in message
    assert "--allow-data-change" in message


def test_allowed_data_change_trains_on_what_is_there_now(tiny_model_dir, tmp_path):
    data, out = _first_run(tiny_model_dir, tmp_path)
    for name in ("001-img.png", "002-img.png", "003-img.png"):
        (data / name).unlink()
    trainer = Trainer(tiny_config(tiny_model_dir, data, steps=4, batch_size=2), out, sink := ListSink())
    trainer.allow_data_change = True
    summary = trainer.run(resume=True)
    assert summary.finished and summary.step == 4
    assert any("6 files removed" in w["message"] for w in sink.of_type("warning")), sink.events[0]["message"]


def test_unchanged_data_resumes_quietly(tiny_model_dir, tmp_path):
    data, out = _first_run(tiny_model_dir, tmp_path)
    sink = ListSink()
    Trainer(tiny_config(tiny_model_dir, data, steps=3, batch_size=2), out, sink).run(resume=True)
    assert not [w for w in sink.of_type("warning") if "data folder" in w["message"]]
