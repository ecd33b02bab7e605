"""The short form of bench/kill_trials.py (issue 13): one kill -9 at a random time after the first checkpoint and one
aimed at each kind of write (embedding, state, status, final); every run resumes, finishes bit-identical to an
uninterrupted run, with no torn file and no temp file left behind. The full 40 trials: `python bench/kill_trials.py`."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # 11 worker lives: about a minute on 2 idle cores, several under load

BENCH = Path(__file__).resolve().parent.parent / "bench" / "kill_trials.py"


def _bench():
    spec = importlib.util.spec_from_file_location("kill_trials", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_five_kill_trials_resume_bit_identical(tmp_path):
    bench = _bench()
    trials = bench.run_trials(1, 1, tmp_path, seed=1)
    result = bench.summary(trials)
    details = [(t.kind, t.target, t.state_after_kill, t.note, t.torn, t.temps_left) for t in trials]
    assert result["trials"] == 5
    assert result["finished"] == result["bit_identical"] == result["resumed"] == 5, details
    assert result["torn_files"] == 0 and result["temp_files_left"] == 0, details
    assert result["steps_lost_max"] <= bench.SAVE_EVERY, details
