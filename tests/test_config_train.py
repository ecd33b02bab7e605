import pytest

from core.training.config import CHOICES, TrainConfig
from core.errors import TiwizError

BASE = {"model": "m", "data": "d", "name": "cat"}


def test_defaults_validate_and_are_a1111_like():
    cfg = TrainConfig.from_dict(BASE)
    assert cfg.lr == "0.005"
    assert cfg.template == "style_filewords"
    assert cfg.resize == "crop"
    assert cfg.latent_sampling == "once"
    assert cfg.effective_validate_every() == cfg.save_every


def test_toml_round_trip(tmp_path):
    cfg = TrainConfig.from_dict({**BASE, "lr": "0.005:100, 1e-4", "preview_negative": 'ugly, "bad"\\ \u00e9',
                                 "tag_dropout": 0.25, "shuffle_tags": True, "steps": 42})
    path = cfg.to_toml(tmp_path / "config.toml")
    back = TrainConfig.from_toml(path)
    assert back == cfg


def test_toml_numbers_for_lr_accepted(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "m"\ndata = "d"\nname = "x"\nlr = 0.01\nclip_grad_value = 1\n')
    cfg = TrainConfig.from_toml(path)
    assert cfg.lr == "0.01" and cfg.clip_grad_value == "1"


def test_unknown_key_refused_with_suggestion(tmp_path):
    with pytest.raises(TiwizError) as err:
        TrainConfig.from_dict({**BASE, "stepz": 5})
    assert "stepz" in str(err.value) and "'steps'" in str(err.value)
    path = tmp_path / "c.toml"
    path.write_text('model = "m"\nlearning_rate = 1\n')
    with pytest.raises(TiwizError) as err:
        TrainConfig.from_toml(path)
    assert str(path) in str(err.value) and "learning_rate" in str(err.value)


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_bad_enum_names_field_and_allowed_values(key):
    with pytest.raises(TiwizError) as err:
        TrainConfig.from_dict({**BASE, key: "bogus"})
    message = str(err.value)
    assert message.startswith(f"{key}:")
    for allowed in CHOICES[key]:
        assert allowed in message


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"steps": 0}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"vectors": 76}, "vectors"),
        ({"width": 100}, "width"),
        ({"tag_dropout": 1.5}, "tag_dropout"),
        ({"lr": "0.1:x"}, "lr"),
        ({"clip_grad_value": "oops"}, "clip_grad_value"),
        ({"shuffle_tags": "maybe"}, "shuffle_tags"),
        ({"name": "../evil"}, "name"),
        ({"name": ""}, "name"),
        ({"device": "gpu"}, "device"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(TiwizError) as err:
        TrainConfig.from_dict({**BASE, **changes})
    assert str(err.value).startswith(f"{field}:")


def test_bad_toml_is_a_clear_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("model = \n")
    with pytest.raises(TiwizError) as err:
        TrainConfig.from_toml(path)
    assert "not valid TOML" in str(err.value)
    with pytest.raises(TiwizError):
        TrainConfig.from_toml(tmp_path / "missing.toml")


def test_config_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, core.training.config; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
