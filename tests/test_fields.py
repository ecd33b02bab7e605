"""One convention for option metadata (`core.fields`): TrainConfig and PreprocessOptions describe every field the same
way, and every bad value is a FieldError that names its field."""

from __future__ import annotations

import asyncio
import math
import pickle
from dataclasses import fields

import pytest

from core.errors import FieldError, TiwizError
from core.prep.options import PreprocessOptions
from core.training.config import BOUNDS, CHOICES, TrainConfig


@pytest.mark.parametrize("cls", [TrainConfig, PreprocessOptions])
def test_every_field_has_a_spec_with_help(cls):
    specs = cls.field_specs()
    assert [s.name for s in specs] == [f.name for f in fields(cls)]
    for spec in specs:
        assert spec.help, f"{cls.__name__}.{spec.name} has no help text"
        assert spec.type in (bool, int, float, str)
        if spec.choices:
            assert spec.default in spec.choices, spec.name
        if spec.min is not None and spec.type in (int, float):
            assert spec.default >= spec.min or spec.name in ("preview_width", "preview_height"), spec.name


def test_tables_name_real_fields():
    names = {f.name for f in fields(TrainConfig)}
    assert set(BOUNDS) <= names and set(CHOICES) <= names
    spec = {s.name: s for s in TrainConfig.field_specs()}
    assert (spec["vectors"].min, spec["vectors"].max) == (1, 75) and spec["vectors"].bounds_text() == "1-75"
    assert spec["resize"].choices == CHOICES["resize"]
    options = {s.name: s for s in PreprocessOptions.field_specs()}
    assert (options["width"].min, options["width"].max, options["width"].cli) == (64, 4096, "--width")


@pytest.mark.parametrize("changes, field", [
    ({"steps": 0}, "steps"),
    ({"vectors": 76}, "vectors"),
    ({"resize": "zoom"}, "resize"),
    ({"width": 100}, "width"),
    ({"preview_width": 12}, "preview_width"),
    ({"noise_offset": 2.0}, "noise_offset"),
    ({"preview_cfg": math.nan}, "preview_cfg"),
    ({"lr": "fast"}, "lr"),
    ({"clip_grad_value": "0.1:x"}, "clip_grad_value"),
    ({"device": "tpu"}, "device"),
    ({"batch_size": "two"}, "batch_size"),
    ({"shuffle_tags": "maybe"}, "shuffle_tags"),
])
def test_train_config_errors_name_the_field(changes, field):
    data = dict(model="m", data="d", name="n", **changes)
    with pytest.raises(FieldError) as err:
        TrainConfig.from_dict(data)
    assert err.value.field == field and str(err.value).startswith(f"{field}:")
    assert isinstance(err.value, TiwizError)


def test_toml_errors_keep_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('steps = -3\nmodel = "m"\ndata = "d"\nname = "n"\n')
    with pytest.raises(FieldError) as err:
        TrainConfig.from_toml(path)
    assert err.value.field == "steps" and str(path) in str(err.value)


@pytest.mark.parametrize("changes, field", [
    ({"width": 100}, "width"),
    ({"split_overlap": 0.95}, "split_overlap"),
    ({"caption_action": "merge"}, "caption_action"),
    ({"background": "grey"}, "background"),
    ({"focal_crop": True, "focal_face_weight": 0.0, "focal_entropy_weight": 0.0, "focal_edges_weight": 0.0},
     "focal_crop"),
])
def test_preprocess_errors_name_the_field(changes, field):
    with pytest.raises(FieldError) as err:
        PreprocessOptions.from_dict(changes)
    assert err.value.field == field


def test_field_error_survives_pickling():
    err = pickle.loads(pickle.dumps(FieldError("steps", "steps: must be >= 1 (got 0)")))
    assert err.field == "steps" and str(err) == "steps: must be >= 1 (got 0)"


def test_forms_mark_the_field_the_error_names(tmp_path, monkeypatch):
    from tests.tui_support import freeze_cursor, make_photos, wait_idle
    from tui.app import TiwizApp
    from tui.state import WizardState

    freeze_cursor(monkeypatch)
    make_photos(tmp_path / "photos", 2)
    state = WizardState(model="m", source=str(tmp_path / "photos"), dataset=str(tmp_path / "out"), name="zxqcat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="preprocess", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            app.screen.query_one("#pp-width").value = "100"  # a number, but not a multiple of 8
            await wait_idle(pilot)
            assert app.screen.query_one("#pp-width").has_class("-invalid")
            assert "multiple of 8" in str(app.screen.query_one("#message").content)
            app.screen.query_one("#pp-width").value = "96"
            await wait_idle(pilot)
            assert not app.screen.query_one("#pp-width").has_class("-invalid")
            app.state.dataset = str(tmp_path / "photos")
            app.goto("training")
            await wait_idle(pilot)
            app.screen.query_one("#tr-lr").value = "0.005:100, fast"
            await wait_idle(pilot)
            assert app.screen.query_one("#tr-lr").has_class("-invalid")
            assert not app.screen.query_one("#tr-steps").has_class("-invalid")
    asyncio.run(drive())
