"""A training step that runs out of GPU memory (core.training.step_plan): under gradient_checkpointing auto without
checkpointing it is turned on and the step runs again; otherwise the last good step is saved, the run ends with what to
change, and a resume continues. The error is a real torch.OutOfMemoryError raised inside the UNet's forward (a CPU
cannot run out of GPU memory; tests/test_cuda_capture.py provokes a real one on a GPU)."""

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer_running_out_at(model_dir, data, out, at_step: int, unless_checkpointing: bool, **changes):
    """A Trainer whose UNet raises OutOfMemoryError in training forwards from `at_step` on (while it does not
    checkpoint, with `unless_checkpointing`). Returns (trainer, sink, steps at which it raised)."""
    sink = ListSink()
    trainer = Trainer(tiny_config(model_dir, data, steps=6, save_every=2, **changes), out, sink)
    raised = []

    def oom(module, args):
        if torch.is_grad_enabled() and not (unless_checkpointing and module.is_gradient_checkpointing):
            raised.append(trainer.session.step)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (raised by the test)")

    hooked = []

    def poll():
        if trainer.session.step == at_step and not hooked:
            hooked.append(trainer.session.model.unet.register_forward_pre_hook(oom))
        return []

    trainer.poll_commands = poll
    return trainer, sink, raised


def test_auto_turns_checkpointing_on_and_runs_the_step_again(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3)
    trainer, sink, raised = _trainer_running_out_at(tiny_model_dir, data, tmp_path / "run", 3, True)
    outcome = trainer.run()
    assert outcome.finished and outcome.step == 6 and raised == [3]
    assert trainer.session.model.unet.is_gradient_checkpointing
    plans = sink.of_type("memory_plan")
    assert [p["gradient_checkpointing"] for p in plans] == [False, True]
    assert plans[1]["step"] == 3 and "ran out of GPU memory" in plans[1]["reason"]
    assert any("gradient checkpointing turned on" in w["message"] for w in sink.of_type("warning"))
    assert [e["step"] for e in sink.of_type("step")] == [1, 2, 3, 4, 5, 6]  # step 4 ran again, none was lost


@pytest.mark.parametrize("setting", ["off", "on"])
def test_otherwise_the_last_good_step_is_saved_and_the_run_says_what_to_change(setting, tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3)
    out = tmp_path / "run"
    options = dict(gradient_checkpointing=setting, batch_size=2)
    trainer, sink, raised = _trainer_running_out_at(tiny_model_dir, data, out, 3, False, **options)
    with pytest.raises(TiwizError) as info:
        trainer.run()
    message = str(info.value)
    assert raised == [3]
    assert "out of GPU memory at step 4" in message and "state of step 3 is saved" in message
    assert "batch_size (now 2)" in message and "width/height (now 64x64)" in message
    assert ("gradient_checkpointing on" in message) == (setting == "off")
    assert sink.of_type("error")[-1]["message"] == message
    assert torch.load(out / "state" / "latest.pt", weights_only=True)["step"] == 3
    resumed = Trainer(tiny_config(tiny_model_dir, data, steps=6, save_every=2, **options), out, ListSink())
    outcome = resumed.run(resume=True)
    assert outcome.finished and outcome.step == 6
