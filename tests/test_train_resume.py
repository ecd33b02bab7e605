"""Exact resume: 6 steps + a new Trainer resuming to 12 equals 12 steps straight."""

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.runs.lossfile import read_loss_csv
from core.training.trainer import Trainer
from core.runs.run_events import EndReason
from train_helpers import make_images, tiny_config, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

# Every random stream the loop has: latent resampling, shuffled tags, tag dropout, template lines, data order,
# accumulation and an lr schedule that changes in the second half.
OPTIONS = dict(latent_sampling="random", shuffle_tags=True, tag_dropout=0.3, grad_accum=2, batch_size=1,
               lr="0.05:8, 0.02", template="subject_filewords", save_every=3, validate_every=4, clip_grad="norm",
               clip_grad_value="1.0")


def _vectors(out):
    return torch.load(out / "state" / "latest.pt", weights_only=True)["vectors"]


def test_resume_is_exact(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3)
    straight = tmp_path / "straight"
    Trainer(tiny_config(tiny_model_dir, data, steps=12, **OPTIONS), straight, ListSink()).run()

    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, steps=12, **OPTIONS), split, ListSink())
    first.poll_commands = lambda: ["stop"] if first.session.step == 6 else []
    summary = first.run()
    assert summary.reason is EndReason.STOP and summary.step == 6

    sink = ListSink()
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=12, **OPTIONS), split, sink).run(resume=True)
    assert summary.finished and summary.step == 12
    assert sink.of_type("started")[0]["step"] == 6
    torch.testing.assert_close(_vectors(split), _vectors(straight), rtol=0, atol=1e-5)

    a, b = read_loss_csv(straight / "loss.csv"), read_loss_csv(split / "loss.csv")
    assert [r["step"] for r in b] == list(range(13))
    for ra, rb in zip(a, b):
        assert ra["lr"] == rb["lr"]
        for key in ("loss", "val_loss"):
            assert (ra[key] is None) == (rb[key] is None)
            if ra[key] is not None:
                assert abs(ra[key] - rb[key]) < 1e-4


def test_resume_to_more_steps_and_from_a_killed_run(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2), out, ListSink()).run()
    # a "kill" after the step-4 state: pretend the csv got rows past the saved state
    with open(out / "loss.csv", "a") as fh:
        fh.write("5,1,0.5,,0.01,1.0\n6,1,0.4")
    with pytest.raises(TiwizError, match="already at step 4"):
        Trainer(tiny_config(tiny_model_dir, data, steps=4), out, ListSink()).run(resume=True)
    sink = ListSink()
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=7, save_every=2), out, sink).run(resume=True)
    assert summary.step == 7 and sink.of_type("started")[0]["max_steps"] == 7
    assert [r["step"] for r in read_loss_csv(out / "loss.csv")] == [1, 2, 3, 4, 5, 6, 7]
    assert (out / "embeddings" / "tcat-6.pt").is_file() and (out / "tcat.pt").is_file()


def test_resume_without_state_is_a_clear_error(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=1)
    with pytest.raises(TiwizError, match="nothing to resume"):
        Trainer(tiny_config(tiny_model_dir, data), tmp_path / "empty", ListSink()).run(resume=True)


def test_request_stop_saves_and_stops(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    sink = ListSink()
    trainer = Trainer(tiny_config(tiny_model_dir, data, steps=50), tmp_path / "out", sink)
    trainer.poll_commands = lambda: (trainer.request_stop() if trainer.session.step == 3 else None) or []
    summary = trainer.run()
    assert summary.reason is EndReason.INTERRUPTED and summary.step == 3
    stopped = sink.of_type("stopped")[0]
    assert stopped["step"] == 3 and stopped["reason"] == "interrupted"
    assert (tmp_path / "out" / "tcat.safetensors").is_file()
    assert torch.load(tmp_path / "out" / "state" / "latest.pt", weights_only=True)["step"] == 3
