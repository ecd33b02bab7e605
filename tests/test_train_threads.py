"""The CPU thread count: the free cores (allowed cores less the others' load), capped by OMP_NUM_THREADS, fixed by
the `threads` field; re-checked while training."""

import pytest
import torch

from core.training import threads
from core.training.threads import ThreadChoice, allowed_cores, free_cores


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("allowed, load, own, expected", [
    (16, 0.2, 0, 16),   # an idle pod: every core
    (16, 4.0, 0, 12),   # preprocessing beside the run
    (16, 6.0, 4, 14),   # 4 of the load are our own threads
    (2, 10.0, 0, 1),    # the shared 2-core box: one thread, never zero
    (2, 1.4, 0, 1),
    (2, 0.4, 0, 2),
])
def test_free_cores(monkeypatch, allowed, load, own, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert free_cores(own_threads=own, load=load, allowed=allowed) == expected


def test_omp_num_threads_caps_the_choice(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert free_cores(load=0.0, allowed=16) == 3


def test_allowed_cores_is_within_the_affinity():
    import os

    assert 1 <= allowed_cores() <= len(os.sched_getaffinity(0))


def test_configured_threads_are_used_as_given():
    choice = ThreadChoice(3)
    assert choice.apply() == 3 and torch.get_num_threads() == 3


def test_automatic_choice_is_rechecked(monkeypatch):
    now = [0.0]
    loads = iter([10.0, 0.0])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "allowed_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    choice = ThreadChoice(0, clock=lambda: now[0])
    assert choice.apply() == 1 and torch.get_num_threads() == 1   # busy: one thread
    now[0] = threads.RECHECK_S / 2
    assert choice.tick() == 1                                      # not yet re-checked
    now[0] = threads.RECHECK_S + 1
    assert choice.tick() == 2 and torch.get_num_threads() == 2     # the other job ended: both cores
