"""Queue jobs on disk and the `tiwiz queue` commands that need no training: validation at `add` naming the field,
manifests, editable job files, remove/retry, the one-scheduler lock, a bad job failing alone at run time, --on-finish
once per drain, and --ray without Ray."""

import json
import os
import subprocess
import sys

import pytest

from core.errors import TiwizError
from core.queue import jobs as qjobs
from core.queue import scheduler as sched
from core.training.config import TrainConfig
from queue_helpers import setup, write_config, ROOT, cli, write_manifest
from train_helpers import make_images


def test_add_writes_complete_editable_job_files(setup, tmp_path):
    model, data, root, env = setup
    config = write_config(tmp_path / "cat.toml", model=str(model), data=str(data), name="zxq-cat", steps=50)
    out = cli("queue", "add", config, "--set", "init_text=cat", "--set", "steps=70", env=env)
    assert out.returncode == 0, out.stderr
    again = cli("queue", "add", config, env=env)  # the same name again gets its own job and run folder
    assert again.returncode == 0, again.stderr
    manifest = cli("queue", "add", "--manifest", write_manifest(tmp_path / "batch.toml", model, data), env=env)
    assert manifest.returncode == 0, manifest.stderr
    queue = root / "queue"
    jobs = qjobs.list_jobs(queue)
    assert [j.name for j in jobs] == ["zxq-cat", "zxq-cat-2", "ja", "jb", "jc", "jd"]
    first = TrainConfig.from_toml(queue / "zxq-cat.toml")  # a complete config, as `tiwiz train --config` reads it
    assert (first.name, first.init_text, first.steps) == ("zxq-cat", "cat", 70)
    assert first.output == str((root / "zxq-cat").resolve()) and first.data == str(data.resolve())
    assert TrainConfig.from_toml(queue / "zxq-cat-2.toml").output == str((root / "zxq-cat-2").resolve())
    jc = TrainConfig.from_toml(queue / "jc.toml")
    assert (jc.vectors, jc.seed, jc.steps, jc.save_every) == (2, 3, 24, 4)  # the job's overrides on the base
    assert all(j.state == "queued" and j.attempts == 0 for j in jobs)
    listed = json.loads(cli("queue", "--json", env=env).stdout)
    assert listed["scheduler"]["alive"] is False
    assert [(j["name"], j["state"], j["gpu"], j["run_dir"]) for j in listed["jobs"]][0] == \
        ("zxq-cat", "queued", None, str((root / "zxq-cat").resolve()))
    text = cli("queue", env=env).stdout
    assert "scheduler: not running" in text and "zxq-cat-2  queued" in text


def test_add_refuses_a_bad_job_naming_the_field_and_adds_nothing(setup, tmp_path):
    model, data, root, env = setup
    bad = write_config(tmp_path / "bad.toml", model=str(model), data=str(data), name="cat", width=65)
    out = cli("queue", "add", bad, env=env)
    assert out.returncode == 2 and "width: must be a multiple of 8 (got 65)" in out.stderr
    out = cli("queue", "add", write_config(tmp_path / "ok.toml", model=str(model), data=str(data), name="cat"),
              "--set", "lr=fast", env=env)
    assert out.returncode == 2 and "lr" in out.stderr
    out = cli("queue", "add", write_config(tmp_path / "gone.toml", model=str(model), data=str(tmp_path / "gone"),
                                           name="cat"), env=env)
    assert out.returncode == 2 and "data: " in out.stderr and "does not exist" in out.stderr
    manifest = write_manifest(tmp_path / "batch.toml", model, data, jobs={"good": {}, "worse": {"vectors": 0}})
    out = cli("queue", "add", "--manifest", manifest, env=env)
    assert out.returncode == 2 and "job worse: vectors: must be between 1 and 75 (got 0)" in out.stderr
    assert qjobs.list_jobs(root / "queue") == []  # one bad job in a manifest adds none


def test_remove_and_retry(setup, tmp_path):
    model, data, root, env = setup
    queue = root / "queue"
    (a, b) = qjobs.add_jobs(queue, [("a", {"model": str(model), "data": str(data), "name": "a"}, "a"),
                                   ("b", {"model": str(model), "data": str(data), "name": "b"}, "b")])
    with pytest.raises(TiwizError, match="only failed, stopped or finished jobs"):
        qjobs.retry_job(a)
    a.save(state="failed", attempts=3, reason="killed at step 9 (gave up after 3 attempts)",
           lives=[{"event": "launch", "attempt": 1}])
    out = cli("queue", "retry", "a", env=env)
    assert out.returncode == 0, out.stderr
    again = qjobs.load_job(queue, "a")
    assert (again.state, again.attempts, again.launched) == ("queued", 0, True)  # it will resume, not start over
    assert again.reason.startswith("retry requested after: killed at step 9")
    out = cli("queue", "remove", "b", env=env)
    assert out.returncode == 0 and "removed b" in out.stdout
    assert [j.name for j in qjobs.list_jobs(queue)] == ["a"] and not (queue / "b.state.json").exists()
    out = cli("queue", "remove", "nope", env=env)
    assert out.returncode == 2 and "no job 'nope'" in out.stderr


def test_bad_job_file_fails_alone_at_run_time_and_on_finish_runs_once_per_drain(setup, tmp_path):
    model, data, root, env = setup
    queue = root / "queue"
    queue.mkdir(parents=True)
    # Written by hand, no state file: queued. One is invalid; the other is already finished (its run says so).
    write_config(queue / "broken.toml", model=str(model), data=str(data), name="broken", resize="squash")
    finish_log = tmp_path / "finish.txt"
    on_finish = f'echo "$TIWIZ_QUEUE_DONE/$TIWIZ_QUEUE_FAILED/$TIWIZ_QUEUE_TOTAL $TIWIZ_QUEUE_FAILED_JOBS" >> {finish_log}'
    out = cli("queue", "run", "--foreground", "--on-finish", on_finish, env=env)
    assert "broken: failed:" in out.stdout and "resize: must be one of crop, stretch, none" in out.stdout
    assert out.returncode == 1
    job = qjobs.load_job(queue, "broken")
    assert job.state == "failed" and "resize" in job.reason and job.lives == []
    assert finish_log.read_text() == "0/1/1 broken\n"
    again = cli("queue", "run", "--foreground", "--on-finish", on_finish, env=env)  # the same drain: not re-run
    assert "already ran for this drain" in again.stdout
    assert finish_log.read_text() == "0/1/1 broken\n"


def test_one_scheduler_per_queue(tmp_path):
    queue = tmp_path / "queue"
    fd = sched.acquire_scheduler_lock(queue)
    try:
        assert sched.scheduler_alive(queue)
        with pytest.raises(TiwizError, match="already running the queue"):
            sched.acquire_scheduler_lock(queue)
    finally:
        os.close(fd)
    assert not sched.scheduler_alive(queue)


def test_ray_flag_without_ray_says_what_to_install(setup, tmp_path):
    model, data, root, env = setup
    qjobs.add_jobs(root / "queue", [("a", {"model": str(model), "data": str(data), "name": "a"}, "a")])
    code = ("import sys; sys.modules['ray'] = None\n"  # as if the extra were not installed
            "from core.cli import main; sys.exit(main(['queue', 'run', '--ray', 'auto']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 2
    assert "--ray needs Ray, which is not installed: pip install 'tiwiz[ray]'" in out.stderr


def test_shared_folder_probe_names_what_a_node_cannot_do(tmp_path):
    from core.queue.ray_backend import check_shared

    probe = tmp_path / ".probe"
    probe.write_text("token")
    assert check_shared(str(probe), "token", [str(tmp_path)])["ok"]
    missing = check_shared(str(tmp_path / "elsewhere" / ".probe"), "token", [str(tmp_path)])
    assert not missing["ok"] and "cannot read" in missing["message"]
    other = check_shared(str(probe), "another", [str(tmp_path)])
    assert not other["ok"] and "a different folder of the same name" in other["message"]


def test_a_job_named_config_does_not_turn_the_queue_into_a_run_folder(setup):
    from core.runs import folder as runs

    model, data, root, env = setup
    (job,) = qjobs.add_jobs(root / "queue", [(None, {"model": str(model), "data": str(data), "name": "config"}, "x")])
    assert job.name == "config-2" and not runs.is_run_dir(root / "queue")
    with pytest.raises(TiwizError, match="reserved"):
        qjobs.check_job_name("config")
