"""`tiwiz queue run --ray ADDRESS|auto`: each job becomes a named, detached Ray actor that needs one GPU (one CPU on
a CPU cluster) and runs the ordinary detached worker on whichever node has room. Torch-free; Ray is imported only
here, and only when --ray is used (`pip install 'tiwiz[ray]'`).

The same semantics as the local scheduler: the run folders live on a filesystem every node mounts (checked before
anything is submitted), a dead worker is retried from its checkpoint by a new actor, one job's failure touches no
other, and a job never has two live workers (the actor adopts a live run instead of starting one, and the worker's
run lock refuses a second). The actor's name is recorded in the job's state before it is created, and actors are
detached, so a restarted submitter finds them by name (`ray.get_actor`) instead of submitting the jobs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from core.errors import TiwizError
from core.queue import launch as launcher
from core.queue.jobs import Job, list_jobs, load_job
from core.queue.outcome import How, Launched, Outcome
from core.runs.vocab import RunPhase

NAMESPACE = "tiwiz"
INSTALL_HINT = "pip install 'tiwiz[ray]' (on every node)"
CHECK_TIMEOUT_S = 120.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise TiwizError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class JobActor:
    """Runs on a Ray node: starts (or adopts) one life of a job's worker, then waits for it to end."""

    def start(self, queue_dir: str, job_name: str, first: bool) -> Launched:
        job = load_job(Path(queue_dir), job_name)
        result = launcher.launch(job, gpu=None, first=first)  # Ray already set CUDA_VISIBLE_DEVICES for this actor
        return dataclasses.replace(result, host=socket.gethostname(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))

    def wait(self, run_dir: str, poll_s: float = 0.5) -> Outcome:
        while True:
            out = launcher.outcome(run_dir)
            if out is not None:
                return dataclasses.replace(out, host=socket.gethostname())
            time.sleep(poll_s)


def check_shared(path: str, token: str, writable: list[str]) -> dict:
    """Run on every node: can it read the submitter's probe file, and write in every run root?"""
    host = socket.gethostname()
    try:
        seen = Path(path).read_text()
    except OSError as exc:
        return {"ok": False, "host": host, "message": f"cannot read {path} ({exc.strerror or exc})"}
    if seen != token:
        return {"ok": False, "host": host, "message": f"{path} holds other content: a different folder of the same name"}
    for folder in writable:
        probe = Path(folder) / f".tiwiz-probe-{uuid.uuid4().hex}"
        try:
            probe.write_text(host)
            probe.unlink()
        except OSError as exc:
            return {"ok": False, "host": host, "message": f"cannot write in {folder} ({exc.strerror or exc})"}
    return {"ok": True, "host": host, "message": ""}


class RayBackend:
    name = "ray"

    def __init__(self, address: str, queue_dir: str | os.PathLike) -> None:
        ray = import_ray()
        self.ray = ray
        self.queue_dir = Path(queue_dir).resolve()
        self.address = address
        self.qid = hashlib.sha1(str(self.queue_dir).encode()).hexdigest()[:8]
        self.refs: dict[str, dict] = {}
        # The actors import core.queue: this checkout first, then whatever the node already has (Ray expands ${...}
        # on each node; a node with tiwiz installed finds it either way).
        path = str(Path(__file__).resolve().parents[2]) + os.pathsep + "${PYTHONPATH}"
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError ...
            raise TiwizError(f"--ray {address}: cannot connect to a Ray cluster ({exc}). Start one with `ray start "
                             "--head` on one machine and `ray start --address HEAD_IP:6379` on the others") from None
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.cpus = int(resources.get("CPU", 0))
        self.nodes = [n for n in ray.nodes() if n.get("Alive")]
        self.options = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(JobActor)
        self.check_shared_folders()

    def describe(self) -> str:
        per_job = "1 GPU" if self.gpus else "1 CPU"
        return (f"Ray cluster {self.address} ({len(self.nodes)} node{'s' * (len(self.nodes) != 1)}, "
                f"{self.gpus} GPUs, {self.cpus} CPUs; {per_job} per job)")

    def check_shared_folders(self) -> None:
        """Every node must see the queue and be able to write the run folders: a network volume, not local disk."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        roots = {str(self.queue_dir.parent)}
        for job in list_jobs(self.queue_dir):
            if job.run_dir:
                roots.add(str(Path(job.run_dir).parent))
        token = uuid.uuid4().hex
        probe = self.queue_dir / f".probe-{token}"
        try:
            for root in roots:
                Path(root).mkdir(parents=True, exist_ok=True)
            probe.write_text(token)
        except OSError as exc:
            raise TiwizError(f"{exc.filename or self.queue_dir}: not writable ({exc.strerror or exc}); the queue "
                             "and its run folders must be on a writable filesystem every Ray node mounts") from None
        remote = self.ray.remote(num_cpus=0)(check_shared)
        try:
            refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(probe), token, sorted(roots)) for n in self.nodes]
            results = self.ray.get(refs, timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            raise TiwizError(f"could not check that every Ray node sees {self.queue_dir}: {exc}") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass
        for node, result in zip(self.nodes, results):
            if not result["ok"]:
                where = f"{result['host']} ({node.get('NodeManagerAddress')})"
                raise TiwizError(f"Ray node {where} does not share the run folders: {result['message']}. Put the "
                                 "queue and runs on a filesystem every node mounts (e.g. a RunPod network volume at "
                                 "/workspace) and pass --root there")

    # ---- the scheduler's interface ----------------------------------------------------------------------------
    def free_slots(self, running: list[Job]):
        return itertools.repeat("ray")  # every queued job is submitted; Ray places the actors as GPUs/CPUs free up

    def actor_name(self, job: Job) -> str:
        return f"tiwiz-{self.qid}-{job.name}-{job.attempts}"

    def launch(self, job: Job, slot, first: bool) -> Launched:
        name = self.actor_name(job)
        job.save(ray_actor=name)  # before the actor exists: a restarted submitter looks it up by this name
        actor = self.actor_class.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                         max_restarts=0, **self.options).remote()
        start = actor.start.remote(str(self.queue_dir), job.name, first)
        wait = actor.wait.remote(job.run_dir)
        self.refs[job.name] = {"actor": actor, "start": start, "wait": wait}
        return Launched(How.SUBMITTED)

    def _track(self, job: Job) -> dict | None:
        """The refs of a job's actor; after a submitter restart, the detached actor found by its name."""
        refs = self.refs.get(job.name)
        if refs is None and job.ray_actor:
            try:
                actor = self.ray.get_actor(job.ray_actor, namespace=NAMESPACE)
            except ValueError:
                return None
            start = None
            if not _started_this_life(job):  # its start call died with the old submitter: call it again
                first = sum(life.get("event") == "launch" for life in job.lives) <= 1
                start = actor.start.remote(str(self.queue_dir), job.name, first)
            refs = self.refs[job.name] = {"actor": actor, "start": start, "wait": actor.wait.remote(job.run_dir)}
        return refs

    def poll(self, job: Job) -> Outcome | None:
        refs = self._track(job)
        if refs is None:  # no actor (it died with its node, or the cluster restarted): the run folder tells
            return launcher.outcome(job.run_dir)
        ray = self.ray
        if refs["start"] is not None:
            ready, _ = ray.wait([refs["start"]], timeout=0)
            if ready:
                try:
                    started = ray.get(refs["start"])
                except Exception as exc:  # noqa: BLE001 - the job could not start on that node
                    return Outcome.failed(_ray_message(exc))
                refs["start"] = None
                if started.gpu:
                    job.save(gpu=f"{started.host}:{started.gpu}")
                elif started.host:
                    job.save(gpu=started.host)
        ready, _ = ray.wait([refs["wait"]], timeout=0)
        if not ready:
            return None
        try:
            return ray.get(refs["wait"])
        except Exception as exc:  # noqa: BLE001 - the actor died (its node went away)
            return Outcome.failed(f"its Ray actor died ({_ray_message(exc)})", state=RunPhase.KILLED)

    def cancel(self, job: Job) -> bool:
        """Withdraw a job whose actor has not started its worker yet (on `queue stop`)."""
        refs = self._track(job)
        if refs is None or refs["start"] is None:
            return False
        ready, _ = self.ray.wait([refs["start"]], timeout=0)
        if ready:
            return False
        self.done(job)
        return True

    def done(self, job: Job) -> None:
        refs = self.refs.pop(job.name, None)
        actor = refs["actor"] if refs else None
        if actor is None and job.ray_actor:
            try:
                actor = self.ray.get_actor(job.ray_actor, namespace=NAMESPACE)
            except ValueError:
                actor = None
        if actor is not None:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def close(self) -> None:
        try:
            self.ray.shutdown()  # disconnects; the detached actors of running jobs live on
        except Exception:  # noqa: BLE001
            pass


def _started_this_life(job: Job) -> bool:
    """Whether the job's current life got as far as spawning its worker: the run folder's status was written after
    the life was launched. (An actor's `start` call is owned by the submitter that made it; a call still waiting
    for the actor when that submitter died is dropped with it.) Starting again is safe either way: `launch` adopts
    a live run."""
    from core.runs import folder as runs

    launched = max((life.get("time") or 0 for life in job.lives if life.get("event") == "launch"), default=0)
    try:
        status = runs.read_status(job.run_dir) or {}
    except TiwizError:
        return False
    return float(status.get("updated") or 0) >= launched


def _ray_message(exc: BaseException) -> str:
    """The original error of a Ray task, without Ray's wrapping traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TiwizError):
        return str(cause)
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
