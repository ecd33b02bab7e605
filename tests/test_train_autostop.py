"""Auto-stop (the DVAR rule, core.training.autostop) on synthetic validation curves, and on a real run of the shipped
world model, where the trainer ends with a `finished` event whose reason is auto_stop."""

import math
import random

import pytest

from core.errors import TiwizError
from core.training.autostop import AutoStop, points_needed


def _feed(values, window=100, threshold=0.15, every=5):
    rule = AutoStop(window, threshold)
    states = [rule.update(i * every, v) for i, v in enumerate(values)]
    return rule, states


def test_falling_then_flat_stops_after_the_plateau_sets_in():
    rng = random.Random(0)
    values = [0.1 * math.exp(-i / 10) + 0.05 + rng.gauss(0, 0.0005) for i in range(200)]  # every 5 steps
    rule, states = _feed(values)
    assert rule.fired_at is not None
    assert 100 <= rule.fired_at <= 400  # the curve is flat from about step 150 on (i = 30)
    assert sum(s.stop for s in states) == 1  # fires once
    assert states[-1].fired_at == rule.fired_at and states[-1].flat


def test_pure_noise_never_stops():
    """A loss that only wobbles has the same variance in any window as overall: ratio ~1."""
    rng = random.Random(1)
    rule, states = _feed([0.05 + rng.gauss(0, 0.002) for _ in range(400)])
    assert rule.fired_at is None
    ratios = [s.ratio for s in states if s.ratio is not None]
    assert min(ratios) > 0.3


def test_steady_fall_does_not_stop():
    """Still learning: a linear fall over two windows has ratio (1/2)^2 = 0.25 > 0.15."""
    rule, _ = _feed([0.1 - 0.0001 * i for i in range(41)], window=100)
    assert rule.fired_at is None


def test_rising_loss_stops_at_the_minimum_not_on_the_rise():
    """Overfitting: a fall, a flat bottom, then a steady rise. The rule fires on the flat bottom, before the rise;
    a loss that only rises (from the start) does not fire within two windows."""
    rng = random.Random(3)
    values = [0.1 * math.exp(-i / 5) + 0.05 + rng.gauss(0, 0.0003) for i in range(40)]
    values += [0.05 + 0.001 * i + rng.gauss(0, 0.0003) for i in range(1, 80)]
    rule, _ = _feed(values)
    assert rule.fired_at is not None and rule.fired_at < 200  # the rise begins after step 195 (i = 39)
    rising, _ = _feed([0.05 + 0.0005 * i for i in range(41)])
    assert rising.fired_at is None


def test_state_reports_watched_steps_until_the_window_is_full():
    rule = AutoStop(window=100, threshold=0.15)
    first = rule.update(0, 1.0)
    assert first.ratio is None and first.watched == 0 and first.label() == "watching 0 of 100 steps"
    state = None
    for step in range(10, 100, 10):
        state = rule.update(step, 1.0 - step / 1000)
    assert state.watched == 90 and state.ratio is None
    state = rule.update(100, 0.9)
    assert state.watched == 100 and state.ratio is not None
    assert "stops below 0.15" in state.label()


def test_too_few_points_in_the_window_never_decide():
    rule, states = _feed([1.0, 0.5, 0.5, 0.5], window=100, every=100)  # one point per window
    assert all(s.ratio is None for s in states) and rule.fired_at is None


def test_resume_keeps_the_history():
    rng = random.Random(2)
    values = [0.1 * math.exp(-i / 10) + 0.05 + rng.gauss(0, 0.0005) for i in range(200)]
    whole, _ = _feed(values)
    first, _ = _feed(values[:50])
    resumed = AutoStop(100, 0.15)
    resumed.load_state_dict(first.state_dict())
    for i, v in enumerate(values[50:], start=50):
        resumed.update(i * 5, v)
    assert resumed.fired_at == whole.fired_at


def test_config_fields_and_validation(tmp_path):
    from core.training.config import TrainConfig

    cfg = TrainConfig(auto_stop=True, auto_stop_window=200, save_every=500)
    assert cfg.effective_validate_every() == points_needed(200) == 20
    assert TrainConfig(auto_stop=True).effective_validate_every() == 10  # the default window 100: 10 points
    assert TrainConfig(auto_stop=True, auto_stop_window=100, save_every=4).effective_validate_every() == 4
    assert TrainConfig(auto_stop=False, save_every=500).effective_validate_every() == 500
    with pytest.raises(TiwizError, match="^auto_stop: needs the validation loss"):
        TrainConfig(auto_stop=True, validate_every=0).validate(require_paths=False)
    with pytest.raises(TiwizError, match="^auto_stop_threshold"):
        TrainConfig(auto_stop_threshold=1.5).validate(require_paths=False)


def test_the_automatic_cadence_always_lets_the_rule_fire():
    """validate_every -1 with auto_stop validates every points_needed(window) steps: every window gets at least twice
    the points the rule needs, so the cadence alone never keeps it from firing (a window shorter than MIN_POINTS
    steps cannot hold enough points at any cadence)."""
    from core.training.autostop import MIN_POINTS, unreachable_reason

    for window in range(MIN_POINTS, 1001):
        every = points_needed(window)
        assert unreachable_reason(every, window, end_step=2 * window) is None, window
        assert -(-window // every) >= min(window, 2 * MIN_POINTS), window


def test_validating_half_as_often_moves_the_stop_by_at_most_one_point():
    """The cheaper cadence (10 points a window instead of 20): the same falling-then-flat curves seen every 10 steps
    instead of every 5 stop within 10 steps of where the dense ones did (what the world model's curves showed)."""
    for seed in range(20):
        rng = random.Random(seed)
        values = [0.1 * math.exp(-i / 10) + 0.05 + rng.gauss(0, 0.0005) for i in range(200)]  # every 5 steps
        dense, _ = _feed(values, every=5)
        sparse, _ = _feed(values[::2], every=10)
        assert dense.fired_at is not None and sparse.fired_at is not None
        assert abs(sparse.fired_at - dense.fired_at) <= 10, (seed, dense.fired_at, sparse.fired_at)


def test_cli_flag_sets_the_field():
    import argparse

    from core.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--name", "n", "--auto-stop", "--auto-stop-window", "50"])
    cfg = config_from_args(args)
    assert cfg.auto_stop is True and cfg.auto_stop_window == 50


@pytest.mark.slow
def test_runs_and_attach_say_why_it_stopped_and_the_best_step(tmp_path):
    """A real run on the shipped world model: `tiwiz train --foreground --auto-stop` stops itself when the validation
    loss goes flat (well before 400 steps at lr 0.01); then `tiwiz runs` and `tiwiz attach` (real subprocesses) read
    the run through the reducer and say it finished by auto-stop, and at which best step."""
    import subprocess
    import sys
    from pathlib import Path

    from core.world import demo_job

    root = Path(__file__).resolve().parent.parent
    prep = demo_job.prepare_demo(tmp_path, steps=400, n_images=4)
    cfg = prep["config"]
    runs_root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "core.cli", "train", "--foreground", "--model", cfg["model"], "--data", cfg["data"],
           "--name", "zxq-heart", "--init-text", "heart", "--vectors", "2", "--steps", "400", "--lr", "0.01",
           "--loss-weighting", "velocity", "--batch-size", "2", "--width", "64", "--height", "64",
           "--template", cfg["template"], "--save-every", "0", "--preview-every", "0", "--validation-images", "1",
           "--device", "cpu", "--auto-stop", "--auto-stop-window", "20", "--output", str(runs_root / "heart")]
    env = {**__import__("os").environ, "TIWIZ_RUNS_DIR": str(runs_root)}
    trained = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "auto-stop: the validation loss went flat at step" in trained.stderr
    assert "suggested best step" in trained.stderr
    listed = subprocess.run([sys.executable, "-m", "core.cli", "runs", "--root", str(runs_root)], cwd=root,
                            capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0, listed.stderr
    header, row, detail = listed.stdout.splitlines()[:3]
    assert header.split()[-1] == "BEST"
    step = row.split()[2].split("/")[0]
    assert int(step) < 400
    assert row.split()[1] == "finished" and row.split()[-2:] == [step, "(flat)"]  # best: where the rule fired
    assert detail.strip().startswith(f"finished at step {step} (auto-stop: the validation loss went flat")
    attached = subprocess.run([sys.executable, "-m", "core.cli", "attach", str(runs_root / "heart")], cwd=root,
                              capture_output=True, text=True, timeout=120, env=env)
    text = attached.stdout + attached.stderr
    assert f"finished at step {step} (auto-stop" in text and f"suggested best step {step}" in text
    # the log: the trainer's rule state is the rule's own on the losses it wrote, and it fired where the run ended
    from core.runs import run_events as ev

    events = ev.parse_all((runs_root / "heart" / "events.jsonl").read_text().splitlines())
    vals = [e for e in events if isinstance(e, ev.Validation)]
    assert vals[-1].auto_stop_fired_at == int(step) and vals[-1].auto_stop_ratio < 0.15
    replay = AutoStop(20, 0.15)
    assert [replay.update(v.step, v.val_loss).stop for v in vals].index(True) == len(vals) - 1
    finished = next(e for e in events if isinstance(e, ev.Finished))
    assert finished.reason == "auto_stop" and finished.best_step == int(step)
    assert (runs_root / "heart" / finished.best_checkpoint).is_file()
