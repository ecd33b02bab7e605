"""Messages (issue 13, item 14): a refused pickle names what it asked for (os.system) and never passes on torch's
advice to re-run with weights_only=False; a TOML file that starts with a UTF-8 BOM (Notepad) is read."""

import os

import pytest
import torch

from core.errors import TiwizError


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.fixture
def evil(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 8)}, "x": _Evil()}, path)
    return path


def _check(message: str) -> None:
    assert "os.system" in message, message
    assert "weights_only" not in message and "Re-running" not in message, message


def test_embedding_refusal_names_the_call(evil):
    from core.embeddings.formats import load_embedding

    with pytest.raises(TiwizError) as err:
        load_embedding(evil)
    _check(str(err.value))


def test_checkpoint_refusal_names_the_call(tmp_path):
    from core.models.file_loader import read_state_dict

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": _Evil()}, path)
    with pytest.raises(TiwizError) as err:
        read_state_dict(path)
    _check(str(err.value))


def test_resume_state_refusal_names_the_call(tmp_path):
    from core.training.resume_state import load_state

    path = tmp_path / "latest.pt"
    torch.save({"version": 1, "x": _Evil()}, path)
    with pytest.raises(TiwizError) as err:
        load_state(path)
    _check(str(err.value))


def test_toml_with_a_utf8_bom_is_read(tmp_path):
    from core.training.config import TrainConfig

    path = tmp_path / "notepad.toml"
    path.write_bytes(b"\xef\xbb\xbf" + 'model = "m"\ndata = "d"\nname = "cat"\nsteps = 7\n'.encode())
    assert TrainConfig.from_toml(path).steps == 7


def test_queue_job_files_with_a_bom_are_read(tmp_path):
    from core.queue.manifest import read_toml

    path = tmp_path / "job.toml"
    path.write_bytes(b"\xef\xbb\xbf" + 'output = "runs/x"\n'.encode())
    assert read_toml(path) == {"output": "runs/x"}
