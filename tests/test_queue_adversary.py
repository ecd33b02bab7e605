"""Hostile queue folders and races (issue 25, items 27-38): nothing read back from disk runs as a command, concurrent
adds never overwrite each other, deeply nested files are a clear error, edited job files are followed, names never
leave the queue folder."""

import json
import os
from pathlib import Path

import pytest

from core.errors import TiwizError
from core.queue import jobs as qjobs
from core.queue import daemon, launch
from core.queue import scheduler as sched
from queue_helpers import setup, write_config, cli
from small_disk import small_disk  # noqa: F401 (fixture)
from train_helpers import make_images


def test_on_finish_read_from_disk_never_runs(setup, tmp_path):
    """Item 27: an on_finish written into scheduler.json is a data file, not a command: a plain `queue run` (and the
    wizard's settings) never run it; only --on-finish given on the command line runs."""
    model, data, root, env = setup
    queue = root / "queue"
    queue.mkdir(parents=True)
    write_config(queue / "broken.toml", model=str(model), data=str(data), name="broken", resize="squash")
    pwned = tmp_path / "PWNED"
    (queue / sched.SCHEDULER).write_text(json.dumps({"state": "drained", "settings": {
        "gpus": None, "slots": 1, "ray": "", "retries": 0, "on_finish": f"touch {pwned}"}}))
    assert daemon.scheduler_settings(sched.read_scheduler(queue)["settings"])["on_finish"] == ""  # the wizard's `s`
    out = cli("queue", "run", "--foreground", env=env)
    assert out.returncode == 1 and "broken: failed:" in out.stdout
    assert not pwned.exists()
    assert "not run again" in out.stdout + out.stderr  # says that the stored command was not run
    given = tmp_path / "given"
    (queue / "broken.state.json").unlink()  # queued again: a new drain
    out = cli("queue", "run", "--foreground", "--on-finish", f"touch {given}", env=env)
    assert given.exists() and not pwned.exists()


def test_concurrent_adds_never_overwrite_each_other(setup, tmp_path):
    """Item 28: eight `tiwiz queue add` of one config at once: eight jobs, each with its own name and run folder."""
    import subprocess
    import sys

    from queue_helpers import ROOT

    model, data, root, env = setup
    config = write_config(tmp_path / "cat.toml", model=str(model), data=str(data), name="zxq-cat", steps=50)
    procs = [subprocess.Popen([sys.executable, "-m", "core.cli", "queue", "add", str(config)], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    jobs = qjobs.list_jobs(root / "queue")
    assert len(jobs) == 8, [j.name for j in jobs]
    assert len({j.name for j in jobs}) == 8 and len({j.run_dir for j in jobs}) == 8
    said = sorted(line.split()[1].rstrip(":") for out, _ in outs for line in out.splitlines()
                  if line.startswith("added "))
    assert said == sorted(j.name for j in jobs)


def in_process(capsys, *args):
    """The CLI's main in this process: an exception it does not turn into a message fails the test."""
    import subprocess

    from core.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_deeply_nested_job_files_are_problems_not_crashes(setup, tmp_path, capsys):
    """Item 30: a deeply nested JOB.state.json or JOB.toml (or a config given to add/train) is a clear message; the
    listing, the scheduler and stop go on."""
    model, data, root, env = setup
    queue = root / "queue"
    queue.mkdir(parents=True)
    deep_toml = "steps = " + "[" * 200_000 + "]" * 200_000 + "\n"
    write_config(queue / "good.toml", model=str(model), data=str(data), name="good", resize="squash")
    (queue / "good.state.json").write_text("[" * 200_000 + "]" * 200_000)
    (queue / "deep.toml").write_text(deep_toml)
    (tmp_path / "deep.toml").write_text(deep_toml)
    os.environ["TIWIZ_RUNS_DIR"] = str(root)
    try:
        listed = in_process(capsys, "queue")
        assert listed.returncode == 0, listed.stderr
        assert "good.state.json: unreadable" in listed.stdout or "good" in listed.stdout
        assert in_process(capsys, "queue", "--json").returncode == 0
        for args in (("queue", "add", tmp_path / "deep.toml"), ("train", "--config", tmp_path / "deep.toml")):
            out = in_process(capsys, *args)
            assert out.returncode == 2 and "nested too deeply" in out.stderr, (args, out.stderr)
        stop = in_process(capsys, "queue", "stop")
        assert stop.returncode == 0, stop.stderr
    finally:
        del os.environ["TIWIZ_RUNS_DIR"]
    out = cli("queue", "run", "--foreground", env=env)
    assert "Traceback" not in out.stdout + out.stderr and out.returncode == 1, out.stdout + out.stderr
    jobs = {j.name: j for j in qjobs.list_jobs(queue)}
    assert jobs["deep"].state == "failed" and "nested too deeply" in jobs["deep"].reason
    assert jobs["good"].state == "failed" and "resize" in jobs["good"].reason


def test_job_state_is_recorded_on_a_full_disk(small_disk):
    """Item 31: on a full disk the scheduler still records how a job ended (its state file is rewritten in the blocks
    it already has), so the queue never shows a dead job as running and --on-finish can fire."""
    from small_disk import fill_disk

    queue = small_disk / "queue"
    queue.mkdir()
    job = qjobs.Job(queue_dir=queue, name="cat", run_dir=str(small_disk / "cat"))
    job.save(state="running", attempts=1)
    fill_disk(small_disk)
    with pytest.raises(OSError):
        (small_disk / "more.bin").write_bytes(b"\0" * 65536)
    job.save(state="failed", reason="the disk is full")
    again = qjobs.load_job(queue, "cat")
    assert (again.state, again.reason, again.problems) == ("failed", "the disk is full", [])


def test_edited_output_of_a_queued_job_is_followed(tmp_path, tiny_model_dir):
    """Item 32: `output` edited in a queued job's file (documented as editable) is where the job trains and where the
    scheduler watches it: it ends "finished", and a retry never trains a finished run again."""
    from core.runs import folder as runs

    data = make_images(tmp_path / "data", n=2)
    root = tmp_path / "runs"
    env = {"TIWIZ_RUNS_DIR": str(root)}
    config = write_config(tmp_path / "cat.toml", model=str(tiny_model_dir), data=str(data), name="cat", steps=4,
                          width=64, height=64, save_every=2, preview_every=0, validate_every=0, device="cpu")
    assert cli("queue", "add", config, env=env).returncode == 0
    queue = root / "queue"
    elsewhere = tmp_path / "elsewhere"
    text = (queue / "cat.toml").read_text()
    assert str(root / "cat") in text
    (queue / "cat.toml").write_text(text.replace(str((root / "cat").resolve()), str(elsewhere)))
    assert qjobs.load_job(queue, "cat").run_dir == str(elsewhere)
    out = cli("queue", "run", "--foreground", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    job = qjobs.load_job(queue, "cat")
    assert (job.state, job.run_dir) == ("finished", str(elsewhere)), (job, out.stdout)
    assert runs.inspect_run(elsewhere).state == "finished" and not (root / "cat").exists()
    # Edited again after it ran: the job stays with the run folder it trained in.
    (queue / "cat.toml").write_text((queue / "cat.toml").read_text().replace(str(elsewhere), str(tmp_path / "x")))
    assert qjobs.load_job(queue, "cat").run_dir == str(elsewhere)
    retried = cli("queue", "retry", "cat", env=env)
    assert retried.returncode == 2 and "already finished" in retried.stderr


def test_a_later_life_never_overwrites_a_folder_holding_a_run(tmp_path):
    """Item 32: a job whose run folder lost its config.toml but still holds a run is refused, never started over."""
    model, data = tmp_path / "model", make_images(tmp_path / "data", n=1)
    model.mkdir()
    queue = tmp_path / "runs" / "queue"
    [job] = qjobs.add_jobs(queue, [("cat", {"model": str(model), "data": str(data), "name": "cat"}, "cat")])
    job.save(lives=[{"event": "launch", "attempt": 1}], attempts=1)
    run = Path(job.run_dir)
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text('{"type": "started", "time": 1.0, "step": 0, "max_steps": 10}\n')
    with pytest.raises(TiwizError, match="already holds"):
        launch.launch(qjobs.load_job(queue, "cat"))
    assert (run / "events.jsonl").read_text().startswith('{"type": "started"')


def test_job_names_never_reach_outside_the_queue(setup, tmp_path, capsys):
    """Item 33: `remove`/`retry` with a path as the name touch nothing outside the queue folder; a job file placed by
    hand with a name no job may have is ignored and reported (escaped), never a forged row."""
    model, data, root, env = setup
    queue = root / "queue"
    qjobs.add_jobs(queue, [("cat", {"model": str(model), "data": str(data), "name": "cat"}, "cat")])
    outside = root / "victim.toml"
    outside.write_text("keep\n")
    (root / "victim.state.json").write_text('{"state": "failed"}')
    os.environ["TIWIZ_RUNS_DIR"] = str(root)
    try:
        for name in ("../victim", str(root / "victim"), "../runs/victim", "queue/../../victim"):
            for action in ("remove", "retry"):
                out = in_process(capsys, "queue", action, name)
                assert out.returncode == 2 and "no job" in out.stderr, (action, name, out.stderr)
        assert outside.read_text() == "keep\n" and (root / "victim.state.json").exists()
        forged = queue / "evil\nzz  running  GPU0  1 of 1  -  forged.toml"
        forged.write_text((queue / "cat.toml").read_text())
        listed = in_process(capsys, "queue")
        assert listed.returncode == 0
        rows = listed.stdout.splitlines()
        assert not any(line.startswith("zz") for line in rows), listed.stdout
        assert any("ignored" in line and "evil\\n" in line for line in rows + listed.stderr.splitlines()), listed
        assert [j.name for j in qjobs.list_jobs(queue)] == ["cat"]
    finally:
        del os.environ["TIWIZ_RUNS_DIR"]


@pytest.mark.parametrize("where", ["queue", "inside queue", "data", "model", "inside data"])
def test_a_job_output_that_would_clobber_the_queue_or_its_inputs_is_refused(setup, where):
    """Item 33: a job whose run folder is the queue folder (or in it), or the data or model folder, is refused at
    `add` and, for a file placed by hand, when it would start."""
    model, data, root, env = setup
    queue = (root / "queue").resolve()
    output = {"queue": queue, "inside queue": queue / "run", "data": data, "model": model,
              "inside data": data / "run"}[where]
    settings = {"model": str(model), "data": str(data), "name": "cat", "output": str(output)}
    with pytest.raises(TiwizError, match="output: "):
        qjobs.add_jobs(queue, [("cat", settings, "cat.toml")])
    queue.mkdir(parents=True, exist_ok=True)
    write_config(queue / "cat.toml", **settings)
    with pytest.raises(TiwizError, match="output: "):
        launch.launch(qjobs.load_job(queue, "cat"), first=True)
    assert not (Path(output) / "config.toml").exists()


def test_scheduler_reads_a_job_file_again_only_when_it_changes(setup):
    """Item 36: the scheduler looks at the queue four times a second; with many jobs it must not parse every job file
    each time: a tick after nothing changed parses nothing, a changed file is read again, a new one is read once."""
    model, data, root, env = setup
    queue = root / "queue"
    qjobs.add_jobs(queue, [(f"j{i}", {"model": str(model), "data": str(data), "name": f"j{i}"}, "x")
                           for i in range(40)])
    scheduler = sched.Scheduler(queue, sched.LocalBackend(None, 1))
    first = scheduler.jobs.list()
    assert len(first) == 40 and scheduler.jobs.parses == 40
    for _ in range(3):
        assert [j.name for j in scheduler.jobs.list()] == [j.name for j in first]
    assert scheduler.jobs.parses == 40
    qjobs.load_job(queue, "j7").save(state="failed", reason="by hand")
    text = (queue / "j9.toml").read_text()
    (queue / "j9.toml").write_text(text.replace(str((root / "j9").resolve()), str(root / "elsewhere")))
    jobs = {j.name: j for j in scheduler.jobs.list()}
    assert scheduler.jobs.parses == 42
    assert jobs["j7"].state == "failed" and jobs["j9"].run_dir == str(root / "elsewhere")
    (queue / "j3.toml").unlink()
    assert len(scheduler.jobs.list()) == 39 and scheduler.jobs.parses == 42


def test_manifest_paths_are_relative_to_the_manifest(tmp_path):
    """Item 38: relative paths in a manifest are the manifest's folder's, wherever `queue add` is run from."""
    sub = tmp_path / "project"
    (sub / "model").mkdir(parents=True)
    make_images(sub / "data", n=1)
    manifest = sub / "batch.toml"
    manifest.write_text('model = "model"\n[[job]]\nname = "cat"\ndata = "data"\noutput = "out/cat"\n')
    from core.queue.manifest import manifest_entries

    entries = manifest_entries(manifest)
    [job] = qjobs.add_jobs(tmp_path / "runs" / "queue", [(n, d, "m") for n, d in entries])
    config = job.load_config()
    assert (config.model, config.data, config.output) == (str(sub / "model"), str(sub / "data"), str(sub / "out/cat"))


def test_a_vanished_model_says_so_and_keeps_the_checkpoint(setup, tmp_path):
    """Item 38: a job whose model vanished after a checkpoint at step 10 is not "failed at step 0" nor "retrying from
    the start": it says the model is gone and that the checkpoint at step 10 is where it resumes."""
    from core.runs import folder as runs

    model, data, root, env = setup
    queue = root / "queue"
    [job] = qjobs.add_jobs(queue, [("cat", {"model": str(model), "data": str(data), "name": "cat"}, "cat")])
    run = Path(job.run_dir)
    (run / "state").mkdir(parents=True)
    (run / "state" / "latest.pt").write_bytes(b"state")
    (run / "config.toml").write_text((queue / "cat.toml").read_text())
    runs.write_status(run, {"state": "stopped", "step": 12, "max_steps": 100, "last_checkpoint": 10})
    job.save(state="stopped", attempts=1, lives=[{"event": "launch", "attempt": 1}])
    model.rmdir()
    out = cli("queue", "run", "--foreground", "--retries", "1", env=env)
    job = qjobs.load_job(queue, "cat")
    text = out.stdout + job.reason
    assert job.state == "failed", out.stdout
    assert "does not exist" in job.reason and str(model) in job.reason, job.reason
    assert "step 0" not in text and "no checkpoint yet" not in text, text
    assert "checkpoint at step 10" in out.stdout, out.stdout
