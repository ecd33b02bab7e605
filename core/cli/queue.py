"""`tiwiz queue`: a batch of embeddings as one command, spread over every GPU (or over a Ray cluster).

  tiwiz queue                               list the jobs: state, GPU, step/max, ETA, run folder (--json)
  tiwiz queue add CONFIG.toml [--set k=v]   add one job (a complete TrainConfig)
  tiwiz queue add --manifest batch.toml     add many: base settings + a [[job]] list
  tiwiz queue remove JOB | retry JOB        drop a job / queue a failed or stopped job again
  tiwiz queue run [--gpus 0,1 | --slots N]  start the detached scheduler (--ray ADDRESS|auto for a Ray cluster)
  tiwiz queue stop                          running jobs save and stop; no new job starts
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from core.errors import TiwizError
from core.safe_text import safe_print

EPILOG = """examples:
  tiwiz queue add cat.toml --set steps=2000 --set init_text=cat
  tiwiz queue add --manifest characters.toml
  tiwiz queue run --gpus 0,1,2,3 --on-finish 'runpodctl stop pod $RUNPOD_POD_ID'
  tiwiz queue run --slots 2            (CPU)
  tiwiz queue run --ray auto           (every node of a Ray cluster; run folders on a shared volume)

manifest (batch.toml): the base settings, then one [[job]] per embedding; a job's keys override the base:
  model = "/workspace/models/sd15.safetensors"
  steps = 2000
  [[job]]
  name = "zxq-cat"
  data = "/workspace/data/cat"
  init_text = "cat"
  [[job]]
  name = "zxq-dog"
  data = "/workspace/data/dog"
  init_text = "dog"
  lr = "0.003"
"""


def register(subparsers) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS,
                        help="folder holding the runs (default ./runs or $TIWIZ_RUNS_DIR)")
    common.add_argument("--queue", dest="queue_dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="the queue folder (default ROOT/queue)")
    p = subparsers.add_parser("queue", parents=[common], help="queue many trainings and run them on every GPU",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="one JSON document: the scheduler and every job")
    p.set_defaults(func=cmd_list)
    sub = p.add_subparsers(dest="queue_command", metavar="ACTION")

    s = sub.add_parser("list", parents=[common], help="list the jobs (the default)")
    s.add_argument("--json", action="store_true", help="one JSON document: the scheduler and every job")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("add", parents=[common], help="add a job (a TrainConfig TOML) or a manifest of jobs",
                       description="Add jobs. Each is validated now (the field is named when one is wrong) and "
                                   "stored as a complete TrainConfig TOML in the queue folder, editable by hand. "
                                   "Each job's run folder is ROOT/JOB unless the config sets `output`.")
    s.add_argument("config", nargs="?", metavar="CONFIG.toml", help="a training config (as `tiwiz train --config`)")
    s.add_argument("--manifest", metavar="BATCH.toml", help="base settings plus a [[job]] list (see `tiwiz queue -h`)")
    s.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", default=[],
                   help="override a setting (repeatable), e.g. --set steps=2000 --set init_text=cat")
    s.add_argument("--name", help="the job's name (default: the embedding name)")
    s.set_defaults(func=cmd_add)

    s = sub.add_parser("remove", parents=[common], help="remove a job from the queue (its run folder stays)")
    s.add_argument("job")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("retry", parents=[common], help="queue a failed or stopped job again (it resumes from its "
                                                        "last checkpoint)")
    s.add_argument("job")
    s.set_defaults(func=cmd_retry)

    s = sub.add_parser("run", parents=[common], help="start the scheduler (detached; survives SSH drops)",
                       description="Start the queue's scheduler in the background. It runs one worker per GPU, "
                                   "pinned with CUDA_VISIBLE_DEVICES (or --slots workers on CPU), retries a dead "
                                   "worker from its checkpoint, and exits when the queue drains. Running it again "
                                   "after a reboot or a kill picks up where it was. Settings not given are those "
                                   "of the previous `queue run`, except --on-finish, which runs only when given.")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--gpus", metavar="0,1,...", help="GPU ids to use, one worker each (default: every GPU)")
    where.add_argument("--slots", type=int, metavar="N", help="number of workers at once on CPU (default 1)")
    where.add_argument("--ray", metavar="ADDRESS", help="submit each job to a Ray cluster (`auto` = the cluster this "
                                                        "machine joined); needs `pip install 'tiwiz[ray]'`")
    s.add_argument("--retries", type=int, metavar="N", help="retries of a dead worker, each from its last "
                                                            "checkpoint (default 2)")
    s.add_argument("--on-finish", metavar="CMD", help="shell command run once when the queue drains, with "
                                                      "TIWIZ_QUEUE_DONE, _FAILED, _STOPPED, _TOTAL, _FAILED_JOBS "
                                                      "and _DIR set; only a command given here runs (never one "
                                                      "remembered from an earlier run)")
    s.add_argument("--foreground", action="store_true", help="schedule in this process (Ctrl-C stops gracefully)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("stop", parents=[common], help="stop gracefully: running jobs save, no new job starts")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    s.add_argument("--no-wait", action="store_true", help="ask and return at once")
    s.set_defaults(func=cmd_stop)


def queue_dir_of(args) -> Path:
    from core.queue.jobs import default_queue_dir

    if getattr(args, "queue_dir", None):
        return Path(args.queue_dir)
    return default_queue_dir(getattr(args, "root", None))


# ---- list ---------------------------------------------------------------------------------------------------------
def cmd_list(args) -> int:
    from core.queue.scheduler import read_scheduler, scheduler_alive
    from core.queue.status import job_rows
    from core.timefmt import format_duration

    from core.queue.jobs import ignored_job_files

    queue_dir = queue_dir_of(args)
    sched = read_scheduler(queue_dir)
    alive = scheduler_alive(queue_dir)
    retries = (sched.get("settings") or {}).get("retries")
    rows = job_rows(queue_dir, retries)
    for name in ignored_job_files(queue_dir):  # safe_print shows control characters as escapes
        safe_print(f"ignored {name!r} in {queue_dir}: not a job name (letters, digits, '.', '_', '-'); rename it to "
                   "queue it", file=sys.stderr)
    if args.json:
        safe_print(json.dumps({"queue": str(queue_dir.resolve()), "scheduler": {**sched, "alive": alive},
                          "jobs": [r.as_dict() for r in rows]}))
        return 0
    if alive:
        safe_print(f"scheduler: {sched.get('state', 'running')} (pid {sched.get('pid')} on {sched.get('host')}), "
              f"{sched.get('backend', '')}; stop it with `tiwiz queue stop`")
    elif rows:
        safe_print("scheduler: not running; `tiwiz queue run` starts it")
    if not rows:
        safe_print(f"no jobs in {queue_dir}; `tiwiz queue add CONFIG.toml` adds one")
        return 0
    table = [("JOB", "STATE", "GPU", "STEP", "ETA", "RUN")]
    for r in rows:
        table.append((r.name, r.state, r.gpu or "-", f"{r.step}/{r.max_steps or '?'}",
                      format_duration(r.eta, unknown="-"), r.run_dir))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        safe_print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in rows:
        if r.reason and r.state.split()[0] in ("failed", "stopped", "queued"):
            safe_print(f"  {r.name}: {r.reason}")
    return 0


# ---- add / remove / retry -----------------------------------------------------------------------------------------
def cmd_add(args) -> int:
    from core.queue.jobs import add_jobs, check_job_name
    from core.queue.manifest import manifest_entries, parse_sets, read_toml

    if bool(args.config) == bool(args.manifest):
        raise TiwizError("queue add: give a CONFIG.toml or --manifest BATCH.toml (one of them)")
    sets = parse_sets(args.sets)
    if args.name:
        check_job_name(args.name)
    if args.manifest:
        if args.name:
            raise TiwizError("--name: a manifest names its jobs in [[job]] name = ...")
        entries = [(name, {**data, **sets}, f"{args.manifest}: job {name}")
                   for name, data in manifest_entries(args.manifest)]
    else:
        data = read_toml(args.config)
        data = data.get("train", data) if isinstance(data.get("train"), dict) else data
        entries = [(args.name, {**data, **sets}, str(args.config))]
    root = getattr(args, "root", None)
    added = add_jobs(queue_dir_of(args), entries, runs_root=root)
    for job in added:
        safe_print(f"added {job.name}: {job.config_path} -> {job.run_dir}")
    safe_print(f"{len(added)} job{'s' * (len(added) != 1)} added; `tiwiz queue run` runs the queue")
    return 0


def cmd_remove(args) -> int:
    from core.queue.jobs import find_job, remove_job

    job = find_job(queue_dir_of(args), args.job)
    remove_job(job)
    safe_print(f"removed {job.name}" + (f" (its run folder {job.run_dir} stays)" if job.run_dir else ""))
    return 0


def cmd_retry(args) -> int:
    from core.queue.jobs import find_job, retry_job
    from core.queue.scheduler import scheduler_alive

    queue_dir = queue_dir_of(args)
    job = retry_job(find_job(queue_dir, args.job))
    tail = "the running scheduler picks it up" if scheduler_alive(queue_dir) else "`tiwiz queue run` runs it"
    safe_print(f"{job.name} queued again; {tail}")
    return 0


# ---- run / stop ---------------------------------------------------------------------------------------------------
def run_settings(args, previous: dict) -> dict:
    """The flags given, else the previous run's settings, else the defaults (every GPU, else 1 CPU slot)."""
    from core.queue.daemon import scheduler_settings

    return scheduler_settings(previous, gpus=getattr(args, "gpus", None), slots=getattr(args, "slots", None),
                              ray=getattr(args, "ray", None), retries=args.retries, on_finish=args.on_finish)


def check_ray_installed() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise TiwizError("--ray needs Ray, which is not installed: pip install 'tiwiz[ray]' (or pip install "
                         "'ray[default]') on every node") from None


def cmd_run(args) -> int:
    from core.queue import daemon, scheduler

    queue_dir = queue_dir_of(args).resolve()
    previous = scheduler.read_scheduler(queue_dir).get("settings") or {}
    settings = run_settings(args, previous)
    if args.on_finish is None and isinstance(previous, dict) and previous.get("on_finish"):
        safe_print("note: the previous --on-finish command is not run again; give --on-finish on this command line "
                   "to run one when the queue drains")
    if settings["ray"]:
        check_ray_installed()
    if args.foreground:
        daemon.check_startable(queue_dir)
        return scheduler.main(daemon.scheduler_argv(queue_dir, settings, uuid.uuid4().hex) + ["--foreground"])
    sched, jobs = daemon.start_detached(queue_dir, settings)
    pending = sum(j.state in ("queued", "running", "stopped") for j in jobs)
    safe_print(f"scheduler running in the background (pid {sched.get('pid')}): {sched.get('backend')}, {pending} of "
          f"{len(jobs)} jobs to do. Watch: tiwiz queue   Stop: tiwiz queue stop   Log: "
          f"{queue_dir / scheduler.SCHEDULER_LOG}")
    return 0


def cmd_stop(args) -> int:
    from core.queue import scheduler
    from core.queue.daemon import stop_queue

    queue_dir = queue_dir_of(args)
    stopped = stop_queue(queue_dir)
    if stopped is not None:
        safe_print(f"no scheduler is running; asked {stopped} running job{'s' * (stopped != 1)} to save and stop")
        return 0
    if args.no_wait:
        safe_print("asked the scheduler to stop: running jobs save and stop, no new job starts")
        return 0
    safe_print("stopping: running jobs save and stop, no new job starts ...", flush=True)
    deadline = time.monotonic() + args.timeout
    while scheduler.scheduler_alive(queue_dir):
        if time.monotonic() > deadline:
            safe_print(f"still stopping after {args.timeout:.0f} s; `tiwiz queue` shows where it is", file=sys.stderr)
            return 1
        time.sleep(0.2)
    safe_print("stopped; `tiwiz queue run` continues from the checkpoints")
    return 0
