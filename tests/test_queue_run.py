"""The local queue with real processes: a 4-job manifest with --slots 2 survives a kill -9 of the scheduler and of a
worker, a bad job fails alone, every embedding equals an uninterrupted run's, and --on-finish runs exactly once."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from core.queue import scheduler as sched
from core.queue.jobs import list_jobs
from core.runs import folder as runs
from queue_helpers import (JOBS, SAVE_EVERY, STEPS, WorkerWatch, assert_one_worker_at_a_time, cli, load_vectors,
                           references, shared_data, wait_for, write_manifest)


@pytest.mark.slow
def test_queue_survives_kills_and_matches_uninterrupted_runs(tmp_path, tmp_path_factory, tiny_model_dir):
    data = shared_data(tmp_path_factory)
    root = tmp_path / "runs"
    env = {"TIWIZ_RUNS_DIR": str(root)}
    added = cli("queue", "add", "--manifest", write_manifest(tmp_path / "batch.toml", tiny_model_dir, data), env=env)
    assert added.returncode == 0, added.stderr
    queue = root / "queue"
    # A job file edited by hand into an invalid one: it fails alone, at run time, with the field named.
    bad = (queue / "ja.toml").read_text().replace(f"steps = {STEPS}", "steps = 0").replace("/ja\"", "/zbad\"")
    (queue / "zbad.toml").write_text(bad)
    finish_log = tmp_path / "finished.txt"
    on_finish = f'echo "$TIWIZ_QUEUE_DONE $TIWIZ_QUEUE_FAILED $TIWIZ_QUEUE_TOTAL $TIWIZ_QUEUE_DIR" >> {finish_log}'

    with WorkerWatch(root) as watch:
        started = cli("queue", "run", "--slots", 2, "--on-finish", on_finish, env=env)
        assert started.returncode == 0, started.stderr
        assert "2 CPU slots" in started.stdout
        first_pid = sched.read_scheduler(queue)["pid"]

        def killable():  # a run with a checkpoint and steps still to go
            for job in list_jobs(queue):
                status = runs.read_status(job.run_dir) if job.state == "running" else None
                if status and status.get("state") == "running" and (status.get("last_checkpoint") or 0) >= SAVE_EVERY \
                        and status.get("step", 0) <= STEPS - 2 * SAVE_EVERY:
                    return job, status
            return None

        job, status = wait_for(killable, "a running job past its first checkpoint", interval=0.02)
        os.kill(first_pid, signal.SIGKILL)
        wait_for(lambda: not sched.scheduler_alive(queue), "the scheduler's lock to go")
        os.kill(status["pid"], signal.SIGKILL)
        killed = wait_for(lambda: (i := runs.inspect_run(job.run_dir)).state == "killed" and i, "the worker to die")
        assert killed.step < STEPS

        again = cli("queue", "run", "--on-finish", on_finish, env=env)  # the previous settings (2 slots)
        assert again.returncode == 0, again.stderr
        assert sched.read_scheduler(queue)["pid"] != first_pid
        wait_for(lambda: not sched.scheduler_alive(queue), "the queue to drain", interval=0.2)

    jobs = {j.name: j for j in list_jobs(queue)}
    assert {n: j.state for n, j in jobs.items()} == {**{n: "finished" for n in JOBS}, "zbad": "failed"}
    assert "zbad.toml: steps: must be" in jobs["zbad"].reason and "(got 0)" in jobs["zbad"].reason
    assert not jobs["zbad"].lives  # it never got a worker
    assert jobs[job.name].attempts == 2 and [life["how"] for life in jobs[job.name].lives] == ["started", "resumed"]
    assert "killed at step" in sched_log(queue)

    refs = references(tiny_model_dir, data, tmp_path_factory.getbasetemp() / "queue-refs")
    for name in JOBS:
        run_dir = Path(jobs[name].run_dir)
        assert run_dir == root / name
        assert torch.allclose(load_vectors(run_dir / f"{name}.safetensors"), refs[name], atol=1e-5, rtol=0), name
        assert_one_worker_at_a_time(run_dir, lives=2 if name == job.name else 1)
        assert watch.max_per_run.get(str(run_dir), 0) <= 1, watch.max_per_run

    assert finish_log.read_text().splitlines() == [f"4 1 5 {queue.resolve()}"]
    listed = json.loads(cli("queue", "--json", env=env).stdout)
    assert [(j["name"], j["state"], j["step"]) for j in listed["jobs"]] == \
        [(n, "finished", STEPS) for n in JOBS] + [("zbad", "failed", 0)]
    # Running the drained queue again does nothing, and --on-finish does not run a second time.
    third = cli("queue", "run", "--foreground", "--on-finish", on_finish, env=env)
    assert "already ran for this drain" in third.stdout
    assert len(finish_log.read_text().splitlines()) == 1


def sched_log(queue: Path) -> str:
    return (queue / sched.SCHEDULER_LOG).read_text(errors="replace")


@pytest.mark.slow
def test_gpu_pinning_then_queue_stop_saves_running_jobs_and_starts_no_new_one(tmp_path, tmp_path_factory,
                                                                              tiny_model_dir):
    from core.queue.jobs import add_jobs

    data = shared_data(tmp_path_factory)
    root = tmp_path / "runs"
    env = {"TIWIZ_RUNS_DIR": str(root)}
    queue = root / "queue"
    endless = dict(model=str(tiny_model_dir), data=str(data), steps=100000, width=64, height=64, save_every=0,
                   preview_every=0, validate_every=0, device="cpu")
    add_jobs(queue, [(n, {**endless, "name": n}, n) for n in ("first", "second", "third")])
    # Two "GPUs" (this machine trains on CPU; the pinning is what is checked): one worker each.
    started = cli("queue", "run", "--gpus", "0,1", env=env)
    assert started.returncode == 0, started.stderr
    assert "GPUs 0,1" in started.stdout

    def training(name):
        return (runs.read_status(root / name) or {}).get("step", 0) >= 1 if runs.is_run_dir(root / name) else False

    wait_for(lambda: training("first") and training("second"), "two jobs to train")
    pinned = {}
    for name in ("first", "second"):
        environ = Path(f"/proc/{runs.read_status(root / name)['pid']}/environ").read_bytes().split(b"\0")
        pinned[name] = [v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"CUDA_VISIBLE_DEVICES=")]
    assert pinned == {"first": ["0"], "second": ["1"]}
    listed = json.loads(cli("queue", "--json", env=env).stdout)
    assert [(j["name"], j["state"], j["gpu"]) for j in listed["jobs"]] == \
        [("first", "running", "0"), ("second", "running", "1"), ("third", "queued", None)]

    stopped = cli("queue", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped; `tiwiz queue run` continues from the checkpoints" in stopped.stdout
    assert not sched.scheduler_alive(queue) and sched.read_scheduler(queue)["state"] == "stopped"
    for name in ("first", "second"):
        info = runs.inspect_run(root / name)
        assert (info.alive, info.reason) == (False, "stop requested")
        assert info.last_checkpoint == info.step >= 1 and (root / name / f"{name}.safetensors").is_file()  # saved
    jobs = {j.name: j for j in list_jobs(queue)}
    assert [jobs[n].state for n in ("first", "second", "third")] == ["stopped", "stopped", "queued"]
    assert not (root / "third").exists()  # no new job started
    assert not (queue / sched.STOP).exists()
