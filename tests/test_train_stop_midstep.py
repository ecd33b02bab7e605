"""A stop is honoured between micro-batches (issue 13, item 10): with a large grad_accum, `stop` or SIGTERM does not
wait for every forward/backward of the step; the abandoned step leaves no trace, so the resume is still exact."""

import pytest
import torch

from core.events import ListSink
from core.training.trainer import Trainer
from core.runs.run_events import EndReason
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = dict(grad_accum=3, batch_size=1, latent_sampling="random", shuffle_tags=True, save_every=2)


def _vectors(out):
    return torch.load(out / "state" / "latest.pt", weights_only=True)["vectors"]


def test_a_stop_command_ends_a_huge_step_after_one_micro_batch(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    polls = []

    def poll():
        polls.append(1)
        return ["stop"] if len(polls) == 3 else []

    trainer = Trainer(tiny_config(tiny_model_dir, data, steps=3, grad_accum=1024), tmp_path / "out", ListSink(),
                      poll_commands=poll)
    summary = trainer.run()
    assert summary.reason is EndReason.STOP and summary.step == 0
    assert len(polls) == 4  # before the step, after micro-batches 1 and 2 (the stop), and the loop's own poll


def test_a_signal_between_micro_batches_stops_and_the_resume_is_exact(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3)
    straight = tmp_path / "straight"
    Trainer(tiny_config(tiny_model_dir, data, steps=4, **OPTIONS), straight, ListSink()).run()

    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, steps=4, **OPTIONS), split, ListSink())
    calls = []

    def poll():
        calls.append(first.session.step)
        if first.session.step == 2 and calls.count(2) == 3:  # inside step 3, after its second micro-batch
            first.request_stop()
        return []

    first.poll_commands = poll
    summary = first.run()
    assert summary.reason is EndReason.INTERRUPTED and summary.step == 2
    Trainer(tiny_config(tiny_model_dir, data, steps=4, **OPTIONS), split, ListSink()).run(resume=True)
    torch.testing.assert_close(_vectors(split), _vectors(straight), rtol=0, atol=1e-6)
