"""A kill during the final save (issue 13, item 1): the resume state reaches `steps` before the top-level NAME.pt /
NAME.safetensors are written. A resume at the last step must write the missing final files and finish."""

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _st_vectors(path):
    from safetensors.torch import load_file

    return next(iter(load_file(str(path)).values()))


def test_resume_after_a_kill_in_the_final_save_writes_the_final_files(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2), out, ListSink()).run()
    # The disk as a kill between state/latest.pt (step 4) and the final files leaves it.
    (out / "tcat.pt").unlink()
    (out / "tcat.safetensors").unlink()
    sink = ListSink()
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2), out, sink).run(resume=True)
    assert summary.finished and summary.step == 4
    assert sink.of_type("finished")[0]["step"] == 4
    assert (out / "tcat.pt").is_file()
    torch.testing.assert_close(_st_vectors(out / "tcat.safetensors"), _st_vectors(out / "embeddings/tcat-4.safetensors"))


def test_stale_final_files_from_an_earlier_end_are_replaced(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=2, save_every=2), out, ListSink()).run()
    stale = _st_vectors(out / "tcat.safetensors")
    Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2), out, ListSink()).run(resume=True)
    # Killed in the final save of the longer run: the top-level files are still the step-2 ones.
    from safetensors.torch import save_file

    save_file({"tcat": stale}, str(out / "tcat.safetensors"), metadata={"step": "2", "name": "tcat"})
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2), out, ListSink()).run(resume=True)
    assert summary.finished and summary.step == 4
    torch.testing.assert_close(_st_vectors(out / "tcat.safetensors"), _st_vectors(out / "embeddings/tcat-4.safetensors"))


def test_a_complete_run_still_asks_for_more_steps(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=1)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=2, save_every=2), out, ListSink()).run()
    with pytest.raises(TiwizError, match="already at step 2"):
        Trainer(tiny_config(tiny_model_dir, data, steps=2), out, ListSink()).run(resume=True)


def test_resume_run_refuses_a_complete_run_whatever_its_status_says(tiny_model_dir, tmp_path):
    """A kill after the final files but before status.json said "finished": resume must not start a worker that
    fails (and then marks a finished run as failed)."""
    from core.runs import api, folder

    data = make_images(tmp_path / "data", n=1)
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, data, steps=2, save_every=2, output=str(out))
    Trainer(config, out, ListSink()).run()
    config.to_toml(out / "config.toml")
    folder.write_status(out, {"pid": 999999, "state": "running", "step": 2, "max_steps": 2, "last_checkpoint": 2})
    with pytest.raises(TiwizError, match="finished all 2 steps"):
        api.resume_run(out)


def test_refused_resume_of_a_complete_run_repairs_its_status_and_temp_files(tiny_model_dir, tmp_path):
    """Kill trial 39/40: a kill in the last status.json write left "running" and a `.status.json.*.tmp` behind.
    The run is complete (final files at the last step), so the refusal says so and leaves the folder saying it too:
    `tiwiz runs` shows finished, not killed, and no temp file stays."""
    from core.runs import api, folder

    data = make_images(tmp_path / "data", n=1)
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, data, steps=2, save_every=2, output=str(out))
    Trainer(config, out, ListSink()).run()
    config.to_toml(out / "config.toml")
    folder.write_status(out, {"pid": 999999, "state": "running", "step": 2, "max_steps": 2, "last_checkpoint": 2})
    temp = out / ".status.json.abc123.tmp"
    temp.write_text("{")
    assert folder.inspect_run(out).state != "finished"
    with pytest.raises(TiwizError, match="finished all 2 steps"):
        api.resume_run(out)
    assert folder.inspect_run(out).state == "finished"
    assert not temp.exists()
