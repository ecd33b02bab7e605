"""`tiwiz queue run --ray` on a real local Ray cluster (2 CPU slots) started by the test: the 4 jobs run as detached
actors, a kill -9 of the submitting scheduler does not duplicate them, a killed worker is resumed from its checkpoint
by a new actor, and every embedding equals an uninterrupted run's."""

import os
import signal
from pathlib import Path

import pytest
import torch

from core.queue import scheduler as sched
from core.queue.jobs import list_jobs
from core.runs import folder as runs
from queue_helpers import (JOBS, STEPS, WorkerWatch, assert_one_worker_at_a_time, cli, load_vectors, references,
                           shared_data, wait_for, write_manifest)

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'tiwiz[ray]')")


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False,
             namespace="tiwiz-test")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_queue_runs_every_job_once_across_a_submitter_restart(tmp_path, tmp_path_factory, tiny_model_dir,
                                                                    ray_address):
    data = shared_data(tmp_path_factory)
    root = tmp_path / "runs"
    env = {"TIWIZ_RUNS_DIR": str(root)}
    added = cli("queue", "add", "--manifest", write_manifest(tmp_path / "batch.toml", tiny_model_dir, data), env=env)
    assert added.returncode == 0, added.stderr
    queue = root / "queue"

    with WorkerWatch(root) as watch:
        started = cli("queue", "run", "--ray", ray_address, env=env)
        assert started.returncode == 0, started.stderr + sched_log(queue)
        assert "Ray cluster" in started.stdout and "1 CPU per job" in started.stdout
        first_pid = sched.read_scheduler(queue)["pid"]

        def two_running():
            live = [j for j in list_jobs(queue) if j.state == "running" and runs.is_run_dir(Path(j.run_dir))
                    and runs.inspect_run(j.run_dir).state == "running"]
            return len(live) == 2 and live

        before = {j.name: j.ray_actor for j in wait_for(two_running, "two jobs training on the Ray cluster")}
        os.kill(first_pid, signal.SIGKILL)  # the submitter dies; its detached actors and their workers go on
        wait_for(lambda: not sched.scheduler_alive(queue), "the scheduler's lock to go")

        def killable():  # a worker past its first checkpoint with steps to go
            for job in list_jobs(queue):
                status = runs.read_status(job.run_dir) if runs.is_run_dir(Path(job.run_dir)) else None
                if status and status.get("state") == "running" and (status.get("last_checkpoint") or 0) >= 4 \
                        and status.get("step", 0) <= STEPS - 8:
                    return job, status
            return None

        victim, status = wait_for(killable, "a worker past its first checkpoint", interval=0.02)
        os.kill(status["pid"], signal.SIGKILL)  # a worker dies too: retried from its checkpoint by a new actor
        wait_for(lambda: runs.inspect_run(victim.run_dir).state == "killed", "the worker to die")

        again = cli("queue", "run", env=env)  # no flags: the previous settings (--ray ADDRESS)
        assert again.returncode == 0, again.stderr + sched_log(queue)
        wait_for(lambda: not sched.scheduler_alive(queue), "the queue to drain", interval=0.2)

    jobs = {j.name: j for j in list_jobs(queue)}
    assert {n: j.state for n, j in jobs.items()} == {n: "finished" for n in JOBS}, sched_log(queue)
    for name in JOBS:  # found again by name, not submitted again (also those still waiting for a CPU)
        if name != victim.name:
            assert jobs[name].attempts == 1 and jobs[name].ray_actor.endswith("-1"), sched_log(queue)
    for name, actor in before.items():
        assert actor.endswith("-1") and (name == victim.name or jobs[name].ray_actor == actor)
    assert jobs[victim.name].attempts == 2 and jobs[victim.name].ray_actor.endswith("-2")  # a new actor resumed it
    assert [life.get("how") for life in jobs[victim.name].lives] == ["submitted", "submitted"]
    refs = references(tiny_model_dir, data, tmp_path_factory.getbasetemp() / "queue-refs")
    for name in JOBS:
        run_dir = Path(jobs[name].run_dir)
        assert torch.allclose(load_vectors(run_dir / f"{name}.safetensors"), refs[name], atol=1e-5, rtol=0), name
        assert_one_worker_at_a_time(run_dir, lives=2 if name == victim.name else 1)
        assert watch.max_per_run.get(str(run_dir), 0) <= 1
        assert runs.inspect_run(run_dir).step == STEPS
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("tiwiz-")]


def sched_log(queue: Path) -> str:
    try:
        return (queue / sched.SCHEDULER_LOG).read_text(errors="replace")[-3000:]
    except OSError:
        return ""
