"""The queue scheduler: `python -m core.queue.scheduler QUEUE_DIR [--slots N | --gpus 0,1] [--retries N]
[--on-finish CMD] [--ray ADDRESS]`. Torch-free.

Started detached by `tiwiz queue run` (new session, stdin /dev/null, output appended to scheduler.log), so it survives
an SSH drop. It holds QUEUE_DIR/scheduler.lock for its whole life (one scheduler per queue). Every tick it reads the
job files, notices runs that ended, retries dead ones from their checkpoint, and fills free slots: one worker per GPU
(pinned with CUDA_VISIBLE_DEVICES) or N workers on CPU, or, with --ray, one Ray actor per job on any node.

All its state is on disk (job state files and the run folders), so after a kill -9 or a reboot a new scheduler picks
up: live workers are adopted, dead ones resume from their last checkpoint. A job never gets two live workers: a run
whose worker is alive is never launched, and the worker's own run lock refuses a second one.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from core.atomic import atomic_write_json, open_own_file, open_own_text
from core.errors import TiwizError
from core.queue import launch as launcher
from core.queue.jobs import Job, JobCache
from core.queue.outcome import How, JobState, Launched, Outcome
from core.runs import folder as runs
from core.runs.vocab import RunPhase

SCHEDULER = "scheduler.json"
SCHEDULER_LOCK = "scheduler.lock"
SCHEDULER_LOG = "scheduler.log"
STOP = "stop"
DRAINED = "drained.json"
TICK_S = 0.25
DEFAULT_RETRIES = 2


# ---- the scheduler's files ----------------------------------------------------------------------------------------
def read_scheduler(queue_dir: str | os.PathLike) -> dict:
    try:
        data = json.loads((Path(queue_dir) / SCHEDULER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def scheduler_alive(queue_dir: str | os.PathLike) -> bool:
    """True when a scheduler holds the queue's lock (on any machine that shares the folder)."""
    return runs.file_lock_is_held(Path(queue_dir) / SCHEDULER_LOCK)


def acquire_scheduler_lock(queue_dir: Path) -> int:
    """The lock fd (kept open for the process's life; the kernel drops it on kill -9), or TiwizError."""
    import fcntl

    queue_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = open_own_file(queue_dir / SCHEDULER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a link is never truncated: what it points at is not ours
        raise TiwizError(f"cannot use {queue_dir / SCHEDULER_LOCK}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + 1.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) or time.monotonic() > deadline:
                os.close(fd)
                holder = read_scheduler(queue_dir)
                who = f" (pid {holder.get('pid')} on {holder.get('host')})" if holder.get("pid") else ""
                raise TiwizError(f"a scheduler{who} is already running the queue in {queue_dir}; `tiwiz queue` "
                                 "shows it, `tiwiz queue stop` stops it") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def request_stop(queue_dir: str | os.PathLike) -> Path:
    from core.atomic import atomic_write_text

    return atomic_write_text(Path(queue_dir) / STOP, f"{time.time():.3f}\n")


def detect_gpus() -> list[str]:
    """The GPUs to use by default: CUDA_VISIBLE_DEVICES when set, else every GPU `nvidia-smi -L` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode:
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


# ---- backends -----------------------------------------------------------------------------------------------------
class LocalBackend:
    """Workers on this machine: one per GPU (pinned) or `slots` on CPU."""

    name = "local"

    def __init__(self, gpus: list[str] | None, slots: int) -> None:
        self.gpus = gpus
        self.slots = len(gpus) if gpus else max(1, slots)

    def describe(self) -> str:
        return f"GPUs {','.join(self.gpus)}" if self.gpus else f"{self.slots} CPU slot{'s' * (self.slots != 1)}"

    def free_slots(self, running: list[Job]) -> list[str | None]:
        if self.gpus:
            used = {job.gpu for job in running}
            free = [g for g in self.gpus if g not in used]
            return free[: max(0, self.slots - len(running))]
        return [None] * max(0, self.slots - len(running))

    def launch(self, job: Job, slot, first: bool) -> Launched:
        return launcher.launch(job, gpu=slot, first=first)

    def poll(self, job: Job) -> Outcome | None:
        return launcher.outcome(job.run_dir)

    def cancel(self, job: Job) -> bool:
        return False  # a local job is started at once: stop it through its run folder

    def done(self, job: Job) -> None:
        pass

    def close(self) -> None:
        pass


# ---- the scheduler ------------------------------------------------------------------------------------------------
class Scheduler:
    def __init__(self, queue_dir: str | os.PathLike, backend, retries: int = DEFAULT_RETRIES, on_finish: str = "",
                 settings: dict | None = None, echo: bool = False) -> None:
        self.queue_dir = Path(queue_dir).resolve()
        self.backend = backend
        self.retries = retries
        self.on_finish = on_finish or ""
        self.settings = settings or {}
        self.echo = echo
        self.stopping = False
        self.stop_sent: set[str] = set()
        self.status: dict = {}
        self.jobs = JobCache(self.queue_dir)  # read every tick; parsed again only when a file changes

    # -- bookkeeping
    def log(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.echo:
            print(line, flush=True)
        else:
            try:
                with open_own_text(self.queue_dir / SCHEDULER_LOG) as fh:
                    fh.write(line + "\n")
            except OSError:
                pass

    def write_status(self, **changes) -> None:
        self.status.update(changes)
        self.status["updated"] = round(time.time(), 3)
        try:
            atomic_write_json(self.queue_dir / SCHEDULER, self.status)
        except OSError as exc:
            self.log(f"cannot write {SCHEDULER}: {exc}")

    # -- the loop
    def run(self, launch_id: str = "") -> int:
        self.write_status(pid=os.getpid(), host=socket.gethostname(), state="running", reason="",
                          started=round(time.time(), 3), settings=self.settings, launch_id=launch_id,
                          backend=self.backend.describe())
        try:
            (self.queue_dir / STOP).unlink()  # a stop meant for an earlier scheduler
        except FileNotFoundError:
            pass
        self.log(f"scheduler pid {os.getpid()} started: {self.backend.describe()}, retries {self.retries}")
        self._poll_running()
        for job in self.jobs.list():  # pick up: stopped jobs continue from their checkpoints
            if job.state == JobState.STOPPED:  # a graceful stop is no failure: a fresh retry budget
                job.save(state=JobState.QUEUED, attempts=0,
                         reason=f"continuing after: {job.reason}" if job.reason else "")
        while True:
            try:
                done = self._tick()
            except OSError as exc:  # a full disk or a vanished file: say so and try again (workers go on)
                self.log(f"error: {exc}; trying again in 5 s")
                time.sleep(5)
                continue
            if done is not None:
                return done
            time.sleep(TICK_S)

    def _tick(self) -> int | None:
        """One look at the queue; the exit code once the scheduler is done (stopped or drained), else None."""
        if (self.queue_dir / STOP).exists() and not self.stopping:
            self.log("stop requested: running jobs save and stop; no new job starts")
            self.stopping = True
            self.write_status(state="stopping")
        running = self._poll_running()
        if self.stopping:
            return self._stop_tick(running)
        queued = [job for job in self.jobs.list() if job.state == JobState.QUEUED]
        for slot, job in zip(self.backend.free_slots(running), queued):
            self._start(job, slot)
            running.append(job)
        if not queued and not running:
            return self._drained()
        return None

    def _stop_tick(self, running: list[Job]) -> int | None:
        for job in list(running):
            if job.name in self.stop_sent:
                continue
            if self.backend.cancel(job):  # submitted to Ray, not started yet: withdrawn
                job.save(state=JobState.QUEUED, reason="withdrawn by `tiwiz queue stop` before it started")
                running.remove(job)
            elif job.run_dir:
                try:
                    runs.send_command(job.run_dir, "stop")
                except (TiwizError, OSError):
                    pass  # its run folder is not there yet: sent again next tick
                else:
                    self.stop_sent.add(job.name)
        if running:
            return None
        try:
            (self.queue_dir / STOP).unlink()
        except FileNotFoundError:
            pass
        self.log("stopped")
        self.write_status(state="stopped")
        return 0

    def request_stop(self, signum=None, frame=None) -> None:
        """SIGTERM/SIGINT (a pod shutting down): the same graceful stop as `tiwiz queue stop`."""
        try:
            request_stop(self.queue_dir)
        except OSError:
            self.stopping = True

    def _poll_running(self) -> list[Job]:
        running = []
        for job in self.jobs.list():
            if job.state != JobState.RUNNING:
                continue
            try:
                out = self.backend.poll(job)
            except Exception as exc:  # noqa: BLE001 - a broken run folder must not stop the queue
                out = Outcome.failed(str(exc), f"unreadable: {exc}")
            if out is None:
                running.append(job)
            else:
                self._ended(job, out)
        return running

    def _start(self, job: Job, slot) -> None:
        if not job.run_dir:
            job.run_dir = str(self.queue_dir.parent / job.name)
        try:
            job.load_config()
        except TiwizError as exc:  # retrying cannot fix a bad job file: it fails alone, at once
            job.save(state=JobState.FAILED, reason=str(exc), gpu=None)
            self.log(f"{job.name}: failed: {exc}")
            return
        attempt, first = job.attempts + 1, not job.launched
        life = {"event": "launch", "attempt": attempt, "gpu": slot, "time": round(time.time(), 3),
                "host": socket.gethostname()}
        job.save(state=JobState.RUNNING, attempts=attempt, gpu=slot, reason="", lives=job.lives + [life])
        try:
            result = self.backend.launch(job, slot, first)
        except Exception as exc:  # noqa: BLE001 - one job's failure never stops the others
            message = str(exc) if isinstance(exc, TiwizError) else f"{type(exc).__name__}: {exc}"
            info = runs.inspect_run(job.run_dir) if job.run_dir and runs.is_run_dir(Path(job.run_dir)) else None
            self._ended(job, Outcome.failed(message, f"could not start: {message}", info.step if info else 0,
                                            info.last_checkpoint if info else None))  # still there to resume
            return
        life.update(how=result.how.value, pid=result.pid)
        job.save(lives=job.lives)
        where = f"GPU {slot}" if slot not in (None, "ray") else self.backend.name
        self.log(f"{job.name}: {result.how} (attempt {attempt}) on {where} in {job.run_dir}")
        if result.how == How.FINISHED:
            self._ended(job, Outcome(state=RunPhase.FINISHED, description="finished"))

    def _ended(self, job: Job, out: Outcome) -> None:
        self.backend.done(job)
        if out.state == RunPhase.FINISHED:
            job.save(state=JobState.FINISHED, reason="")
            self.log(f"{job.name}: finished")
            return
        description = out.description or out.state.value
        if out.state == RunPhase.STOPPED:  # stopped on request or by a signal, after saving
            job.save(state=JobState.STOPPED, reason=description)
            self.log(f"{job.name}: {description}")
            return
        if self.stopping:
            job.save(state=JobState.QUEUED, reason=f"{description}; continues at the next `tiwiz queue run`")
            self.log(f"{job.name}: {description} while stopping")
            return
        if job.attempts <= self.retries:
            ckpt = out.last_checkpoint
            where = f"its checkpoint at step {ckpt}" if ckpt else "the start (no checkpoint yet)"
            job.save(state=JobState.QUEUED, reason=f"attempt {job.attempts} {description}; retrying from {where}")
            self.log(f"{job.name}: attempt {job.attempts} {description}; retrying from {where}")
        else:
            job.save(state=JobState.FAILED, reason=f"{description} (gave up after {job.attempts} attempt"
                                                   f"{'s' * (job.attempts != 1)})")
            self.log(f"{job.name}: failed: {job.reason}")

    def _drained(self) -> int:
        jobs = self.jobs.list()
        summary = {
            "done": sum(j.state == JobState.FINISHED for j in jobs),
            "failed": sum(j.state == JobState.FAILED for j in jobs),
            "stopped": sum(j.state == JobState.STOPPED for j in jobs), "total": len(jobs),
            "failed_jobs": [j.name for j in jobs if j.state == JobState.FAILED],
        }
        self.log(f"queue drained: {summary['done']} finished, {summary['failed']} failed, {summary['stopped']} "
                 f"stopped, {summary['total']} in all")
        self.write_status(state="drained", summary=summary)
        if self.on_finish:
            self._run_on_finish(jobs, summary)
        return 0 if not summary["failed"] else 1

    def _run_on_finish(self, jobs: list[Job], summary: dict) -> None:
        """Once per drain: the marker is written before the command runs, so a scheduler killed while it runs, or
        a later `queue run` with nothing new to do, does not run it again."""
        signature = sorted([j.name, j.state, len(j.lives)] for j in jobs)
        path = self.queue_dir / DRAINED
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            previous = {}
        if isinstance(previous, dict) and previous.get("signature") == signature and previous.get("on_finish"):
            self.log("--on-finish already ran for this drain; not running it again")
            return
        atomic_write_json(path, {"signature": signature, "on_finish": self.on_finish, "summary": summary,
                                 "time": round(time.time(), 3)})
        env = dict(os.environ)
        env.update(TIWIZ_QUEUE_DONE=str(summary["done"]), TIWIZ_QUEUE_FAILED=str(summary["failed"]),
                   TIWIZ_QUEUE_STOPPED=str(summary["stopped"]), TIWIZ_QUEUE_TOTAL=str(summary["total"]),
                   TIWIZ_QUEUE_FAILED_JOBS=" ".join(summary["failed_jobs"]), TIWIZ_QUEUE_DIR=str(self.queue_dir))
        self.log(f"running --on-finish: {self.on_finish}")
        try:
            done = subprocess.run(self.on_finish, shell=True, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
        except OSError as exc:
            self.log(f"--on-finish could not run: {exc}")
            return
        for line in (done.stdout + done.stderr).splitlines()[-50:]:
            self.log(f"  on-finish: {line}")
        self.log(f"--on-finish exited with {done.returncode}")


def make_backend(settings: dict):
    if settings.get("ray"):
        from core.queue.ray_backend import RayBackend

        return RayBackend(settings["ray"], queue_dir=settings["queue_dir"])
    gpus = settings.get("gpus")
    return LocalBackend(gpus=list(gpus) if gpus else None, slots=int(settings.get("slots") or 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.queue.scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("queue_dir")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids, one worker each")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES)
    parser.add_argument("--on-finish", default="")
    parser.add_argument("--ray", default="")
    parser.add_argument("--launch-id", default="")
    parser.add_argument("--foreground", action="store_true", help="log to stdout instead of scheduler.log")
    args = parser.parse_args(argv)
    queue_dir = Path(args.queue_dir).resolve()
    settings = {"gpus": [g for g in args.gpus.split(",") if g] or None, "slots": args.slots,
                "retries": args.retries, "on_finish": args.on_finish, "ray": args.ray, "queue_dir": str(queue_dir)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        lock_fd = acquire_scheduler_lock(queue_dir)
    except TiwizError as exc:
        print(f"tiwiz queue: {exc}", file=sys.stderr, flush=True)
        return 3
    scheduler = None
    try:
        backend = make_backend(settings)
        scheduler = Scheduler(queue_dir, backend, retries=args.retries, on_finish=args.on_finish,
                              settings={k: v for k, v in settings.items() if k != "queue_dir"}, echo=args.foreground)
        signal.signal(signal.SIGTERM, scheduler.request_stop)

        def on_interrupt(signum, frame) -> None:  # Ctrl-C: stop gracefully; a second one gives up waiting
            if scheduler.stopping:
                raise KeyboardInterrupt
            scheduler.request_stop()

        signal.signal(signal.SIGINT, on_interrupt)
        return scheduler.run(args.launch_id)
    except TiwizError as exc:
        print(f"tiwiz queue: {exc}", file=sys.stderr, flush=True)
        atomic_write_json(queue_dir / SCHEDULER, {**read_scheduler(queue_dir), "pid": os.getpid(),
                                                  "host": socket.gethostname(), "state": "failed",
                                                  "reason": str(exc), "launch_id": args.launch_id,
                                                  "updated": round(time.time(), 3)})
        return 2
    finally:
        if scheduler is not None:
            scheduler.backend.close()
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
