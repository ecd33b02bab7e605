"""Values that passed validation and then failed or hung (issue 13, items 8 and 10): each is refused up front with
a one-line message naming the flag (on the command line) or the field (in a file or a form)."""

import pytest

from core.cli import main
from core.errors import FieldError
from core.training.config import TrainConfig


def _config(**changes):
    base = dict(model="m", data="d", name="x")
    base.update(changes)
    return TrainConfig.from_dict(base)


@pytest.mark.parametrize("changes, field", [
    ({"seed": 2 ** 70}, "seed"),
    ({"seed": -1}, "seed"),
    ({"preview_seed": 2 ** 70}, "preview_seed"),
    ({"lr": "1e39"}, "lr"),
    ({"lr": "0.005:100, 1e39"}, "lr"),
    ({"grad_accum": 10 ** 12}, "grad_accum"),
    ({"batch_size": 10 ** 9}, "batch_size"),
    ({"steps": 10 ** 15}, "steps"),
    ({"clip_grad_value": "1e39"}, "clip_grad_value"),
])
def test_out_of_range_values_name_the_field(changes, field):
    with pytest.raises(FieldError) as err:
        _config(**changes)
    assert err.value.field == field and str(err.value).startswith(f"{field}:"), str(err.value)


def test_sane_values_still_pass():
    _config(seed=2 ** 32, lr="0.005:100, 1e-3", grad_accum=64, steps=100_000, preview_seed=12345)


def _run_cli(capsys, *args):
    code = main(["train", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    return tmp_path


def _base(folders):
    return ["--model", folders / "model", "--data", folders / "data", "--name", "cat"]


def test_nul_in_output_or_data_names_the_flag(capsys, folders):
    err = _run_cli(capsys, *_base(folders), "--output", f"{folders}/a\0b", "--detach")
    assert err.startswith("tiwiz: error: --output:") and "NUL" in err, err
    err = _run_cli(capsys, "--model", folders / "model", "--data", f"{folders}/da\0ta", "--name", "cat", "--detach")
    assert err.startswith("tiwiz: error: --data:") and "NUL" in err, err


def test_output_that_is_a_file_names_the_flag(capsys, folders):
    (folders / "afile").write_text("x")
    err = _run_cli(capsys, *_base(folders), "--output", folders / "afile", "--detach")
    assert err.startswith("tiwiz: error: --output:") and "is a file" in err, err


def test_output_name_over_255_bytes_names_the_flag(capsys, folders):
    err = _run_cli(capsys, *_base(folders), "--output", folders / ("é" * 130), "--detach")
    assert err.startswith("tiwiz: error: --output:") and "255" in err, err


def test_long_name_without_output_names_the_flag(capsys, folders):
    err = _run_cli(capsys, "--model", folders / "model", "--data", folders / "data", "--name", "n" * 241, "--detach")
    assert err.startswith("tiwiz: error: --name:"), err


def test_values_from_a_config_file_keep_the_field_name(capsys, folders):
    (folders / "c.toml").write_text('seed = 1180591620717411303424\n')
    err = _run_cli(capsys, "--config", folders / "c.toml", *_base(folders), "--detach")
    assert "seed:" in err and "--seed" not in err, err
