"""Queue jobs on disk. Torch-free.

```
runs/queue/
  JOB.toml          a complete TrainConfig (readable, editable by hand; `output` names the job's run folder)
  JOB.state.json    atomic: state, attempts, run folder, GPU, reason, one entry per worker life
  scheduler.json    the scheduler's pid, host, settings and state      (core.queue.scheduler)
  scheduler.lock    flock held by the scheduler for its whole life
  scheduler.log     what the scheduler did, one line each
  stop              dropped by `tiwiz queue stop`
  drained.json      the last drain's summary (so --on-finish runs once per drain)
  .lock             flock held while jobs are added (names are picked under it)
```

A job file without a state file (written by hand) is a queued job; a job's states are `core.queue.outcome.JobState`.
The run folder is an ordinary run: `tiwiz attach`, `runs`, `stop` and `resume` work on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import atomic_create_text, atomic_write_json, open_own_file
from core.errors import TiwizError
from core.queue.outcome import JobState
from core.runs import folder as runs

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

QUEUE = "queue"
STATE_SUFFIX = ".state.json"
LOCK = ".lock"  # held while jobs are added (queue_lock)
RESERVED = {runs.CONFIG[: -len(".toml")]}  # a job file `config.toml` would make the queue folder look like a run
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def default_queue_dir(root: str | os.PathLike | None = None) -> Path:
    """`ROOT/queue` (ROOT: --root, $TIWIZ_RUNS_DIR or ./runs)."""
    return (Path(root) if root is not None else runs.default_root()) / QUEUE


def job_name_from(text: str) -> str:
    """A file-safe job name from a config name ('my cat' -> 'my_cat')."""
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (text or "job")).strip("._-") or "job"
    return stem[:100]


def check_job_name(name: str) -> str:
    if name in RESERVED:
        raise TiwizError(f"job name {name!r} is reserved; choose another")
    if not valid_job_name(name):
        raise TiwizError(f"job name {name!r}: use letters, digits, '.', '_' and '-' (at most 100), starting with a "
                         "letter or digit")
    return name


def valid_job_name(name: str) -> bool:
    """A name a job may have: it never leaves the queue folder (no '/', no '..' start), never forges a line of
    `tiwiz queue` or a word of $TIWIZ_QUEUE_FAILED_JOBS (no spaces or control characters)."""
    return bool(_NAME_RE.fullmatch(name or "")) and name not in RESERVED and not name.endswith(STATE_SUFFIX) \
        and not name.endswith(".toml")


def check_job_output(out: Path, queue_dir: Path, where: str) -> None:
    """A run folder may not be the queue folder or inside it (its files would be read as jobs)."""
    queue_dir = Path(queue_dir).resolve()
    if out == queue_dir or queue_dir in out.parents:
        raise TiwizError(f"{where}: output: {out} is inside the queue folder {queue_dir}; choose a run folder "
                         "outside it")


@dataclass
class Job:
    queue_dir: Path
    name: str
    state: JobState = JobState.QUEUED
    attempts: int = 0
    run_dir: str = ""
    gpu: str | None = None
    reason: str = ""
    added: float = 0.0
    updated: float = 0.0
    lives: list[dict] = field(default_factory=list)
    ray_actor: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.queue_dir / f"{self.name}.toml"

    @property
    def state_path(self) -> Path:
        return self.queue_dir / f"{self.name}{STATE_SUFFIX}"

    @property
    def launched(self) -> bool:
        """True once a worker was started for this job (later lives resume its run instead of starting it)."""
        return any(life.get("event") == "launch" for life in self.lives)

    def load_config(self):
        """The job's TrainConfig, validated (TiwizError naming the file and field)."""
        from core.training.config import TrainConfig

        return TrainConfig.from_toml(self.config_path)

    def to_state(self) -> dict:
        return {"state": self.state.value, "attempts": self.attempts, "run_dir": self.run_dir, "gpu": self.gpu,
                "reason": self.reason, "added": self.added, "updated": self.updated, "lives": self.lives,
                "ray_actor": self.ray_actor}

    def save(self, **changes) -> "Job":
        for key, value in changes.items():
            setattr(self, key, value)
        self.state = JobState(self.state)  # a word given by a caller is checked here
        self.updated = round(time.time(), 3)
        atomic_write_json(self.state_path, self.to_state(), in_place_when_full=True)  # a full disk: still recorded
        return self


def _run_dir_of(config_path: Path) -> str:
    """The `output` of a job file, read without validating the rest (a broken file must still list)."""
    from core.training.config import load_toml

    try:
        data = load_toml(config_path)  # a UTF-8 BOM (Notepad) is fine
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    data = data.get("train", data) if isinstance(data.get("train"), dict) else data
    value = data.get("output")
    return value if isinstance(value, str) else ""


def load_job(queue_dir: Path, name: str) -> Job:
    if not valid_job_name(name):
        raise TiwizError(f"no job {name!r} in {queue_dir}; `tiwiz queue` lists the jobs")
    job = Job(queue_dir=Path(queue_dir), name=name)
    try:
        data = json.loads(job.state_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        data = {}
        try:
            job.added = job.config_path.stat().st_mtime
        except OSError:
            pass
    except RecursionError:
        data = {}
        job.problems.append(f"{job.state_path}: unreadable (JSON nested too deeply); treated as queued")
    except (OSError, ValueError) as exc:
        data = {}
        job.problems.append(f"{job.state_path}: unreadable ({exc}); treated as queued")
    for key in ("reason", "run_dir", "ray_actor"):
        if isinstance(data.get(key), str):
            setattr(job, key, data[key])
    for key in ("added", "updated"):
        if isinstance(data.get(key), (int, float)):
            setattr(job, key, float(data[key]))
    if isinstance(data.get("attempts"), int):
        job.attempts = data["attempts"]
    if isinstance(data.get("gpu"), (str, type(None))):
        job.gpu = data.get("gpu")
    if isinstance(data.get("lives"), list):
        job.lives = [life for life in data["lives"] if isinstance(life, dict)]
    state = JobState.parse(data.get("state", JobState.QUEUED))
    if state is None:
        job.problems.append(f"{job.state_path}: unknown state {data.get('state')!r}; treated as queued")
    job.state = state or JobState.QUEUED
    if not job.launched:  # `output` may be edited until the job first starts; then its run folder stays
        job.run_dir = _run_dir_of(job.config_path) or job.run_dir
    elif not job.run_dir:
        job.run_dir = _run_dir_of(job.config_path)
    return job


def list_jobs(queue_dir: str | os.PathLike) -> list[Job]:
    """Every job of the queue in the order they were added. A missing folder is an empty queue."""
    queue_dir = Path(queue_dir)
    names = [p.name[: -len(".toml")] for p in _toml_entries(queue_dir) if not p.name.startswith(".") and p.is_file()]
    jobs = [load_job(queue_dir, name) for name in names if valid_job_name(name)]
    jobs.sort(key=lambda j: (j.added, j.name))
    return jobs


def _signature(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class JobCache:
    """`list_jobs` for a reader that looks many times a second (the scheduler): one folder listing and two stats per
    job each time, and a job's files are parsed again only when one of them changed (`parses` counts the reads)."""

    def __init__(self, queue_dir: str | os.PathLike) -> None:
        self.queue_dir = Path(queue_dir)
        self.parses = 0
        self._jobs: dict[str, tuple[tuple, Job]] = {}

    def list(self) -> list[Job]:
        names = [p.name[: -len(".toml")] for p in _toml_entries(self.queue_dir) if not p.name.startswith(".")]
        fresh: dict[str, tuple[tuple, Job]] = {}
        for name in filter(valid_job_name, names):
            config = self.queue_dir / f"{name}.toml"
            key = (_signature(config), _signature(self.queue_dir / f"{name}{STATE_SUFFIX}"))
            if key[0] is None:
                continue  # gone (or not a file) since the listing
            cached = self._jobs.get(name)
            if cached is None or cached[0] != key:
                cached = (key, load_job(self.queue_dir, name))
                self.parses += 1
            fresh[name] = cached
        self._jobs = fresh
        jobs = [job for _, job in fresh.values()]
        jobs.sort(key=lambda j: (j.added, j.name))
        return jobs


def ignored_job_files(queue_dir: str | os.PathLike) -> list[str]:
    """Names of .toml files in the queue folder that no job may have (placed by hand): they are never run."""
    return sorted(p.name for p in _toml_entries(Path(queue_dir))
                  if not p.name.startswith(".") and not valid_job_name(p.name[: -len(".toml")])
                  and p.name != runs.CONFIG)


def find_job(queue_dir: str | os.PathLike, name: str) -> Job:
    queue_dir = Path(queue_dir)
    if valid_job_name(name) and (queue_dir / f"{name}.toml").is_file():
        return load_job(queue_dir, name)
    matches = [j for j in list_jobs(queue_dir) if j.name.startswith(name)] if valid_job_name(name) else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise TiwizError(f"{name!r} matches several jobs: {', '.join(j.name for j in matches[:5])}; give the full name")
    raise TiwizError(f"no job {name!r} in {queue_dir}; `tiwiz queue` lists the jobs")


# ---- adding -------------------------------------------------------------------------------------------------------
def prepare_config(data: dict, where: str):
    """Validate a job's settings as `tiwiz train` would, with absolute paths. TiwizError names `where` and the field."""
    from core.runs.api import _absolutize, check_output_place
    from core.training.config import TrainConfig

    try:
        config = TrainConfig.from_dict(data)
        _absolutize(config)
        for key in ("model", "data"):
            if not Path(getattr(config, key)).exists():
                raise TiwizError(f"{key}: {getattr(config, key)} does not exist")
        if config.init_from and not Path(config.init_from).is_file():
            raise TiwizError(f"init_from: {config.init_from} is not a file")
        if config.output:
            check_output_place(Path(config.output).expanduser().resolve(), config)
        from core.errors import FieldError
        from core.training.preflight import cuda_available_in_subprocess, optimizer_problem

        problem = optimizer_problem(config.optimizer, config.device, cuda=cuda_available_in_subprocess)  # torch-free
        if problem:
            raise FieldError("optimizer", problem)
    except TiwizError as exc:
        field = getattr(exc, "field", None)
        if field:  # keep the field for forms that mark the input (core.errors.FieldError)
            raise type(exc)(field, f"{where}: {exc}") from None
        raise TiwizError(f"{where}: {exc}") from None
    return config


def add_jobs(queue_dir: str | os.PathLike, entries: list[tuple[str | None, dict, str]],
             runs_root: str | os.PathLike | None = None) -> list[Job]:
    """Add jobs given as (job name or None, settings, where-for-messages). Every job is validated first; one bad job
    adds none. Each job's run folder (`output`) defaults to RUNS_ROOT/JOB (RUNS_ROOT: the queue folder's parent).
    Names are picked and the files created under the queue's lock, and a job file is never replaced, so concurrent
    adds each get their own job."""
    queue_dir = Path(queue_dir).resolve()
    root = Path(runs_root).resolve() if runs_root is not None else queue_dir.parent
    configs = [(name, prepare_config(data, where), where) for name, data, where in entries]
    queue_dir.mkdir(parents=True, exist_ok=True)
    with queue_lock(queue_dir):
        prepared = _name_jobs(queue_dir, root, configs)
        added = []
        now = time.time()
        for i, (name, config) in enumerate(prepared):
            job = Job(queue_dir=queue_dir, name=name, run_dir=config.output, added=round(now + i * 1e-3, 3))
            atomic_create_text(job.config_path, config.to_toml_text())  # FileExistsError: never over another job
            job.save()
            added.append(job)
    return added


def _name_jobs(queue_dir: Path, root: Path, configs: list) -> list:
    """(name, config with its run folder) for each validated config: names unique in the queue, run folders unique."""
    existing = list_jobs(queue_dir)
    taken = {j.name for j in existing} | RESERVED | {p.name[: -len(".toml")] for p in _toml_entries(queue_dir)}
    run_dirs = {j.run_dir for j in existing}
    prepared = []
    for name, config, where in configs:
        name = job_name_from(name or config.name)
        name = _unique(name, taken, None if config.output else root)
        taken.add(name)
        if config.output:
            out = Path(config.output).expanduser().resolve()
            check_job_output(out, queue_dir, where)
            if not config.overwrite and runs.holds_run(out):
                raise TiwizError(f"{where}: output: {out} already holds a training run; choose another folder, "
                                 "or set overwrite = true to start over in it")
            if str(out) in run_dirs or any(str(out) == p[1].output for p in prepared):
                raise TiwizError(f"{where}: output: {out} is already the run folder of another job")
            config.output = str(out)
        else:
            config.output = str(root / name)
        prepared.append((name, config))
    return prepared


def _toml_entries(queue_dir: Path) -> list[Path]:
    try:
        return [p for p in Path(queue_dir).iterdir() if p.name.endswith(".toml")]
    except OSError:
        return []


@contextlib.contextmanager
def queue_lock(queue_dir: Path):
    """An exclusive flock on QUEUE/.lock for changes that read then write the queue (picking a job's name)."""
    import fcntl

    try:
        fd = open_own_file(Path(queue_dir) / LOCK, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise TiwizError(f"cannot lock the queue in {queue_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _unique(name: str, taken: set[str], root: Path | None) -> str:
    """`name`, or name-2, name-3... so that neither another job nor (when the run folder is derived from the name)
    an existing run folder is reused."""
    candidate, n = name, 1
    while candidate in taken or (root is not None and (root / candidate).exists()):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


# ---- changing -----------------------------------------------------------------------------------------------------
def remove_job(job: Job) -> None:
    if job.state == JobState.RUNNING:
        info = runs.inspect_run(job.run_dir) if job.run_dir else None
        if info is not None and info.alive:
            raise TiwizError(f"job {job.name} is running ({job.run_dir}); stop it first with `tiwiz stop "
                             f"{job.run_dir}`, then remove it")
    for path in (job.config_path, job.state_path):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def retry_job(job: Job) -> Job:
    """Queue a failed or stopped job again with a fresh retry budget; its run resumes from its last checkpoint."""
    if not job.state.final:
        raise TiwizError(f"job {job.name} is {job.state}; only failed, stopped or finished jobs can be retried")
    if job.state == JobState.FINISHED:
        raise TiwizError(f"job {job.name} already finished; `tiwiz resume {job.run_dir} --steps N` trains further")
    return job.save(state=JobState.QUEUED, reason="retry requested" + (f" after: {job.reason}" if job.reason else ""),
                    attempts=0, gpu=None, lives=job.lives + [{"event": "retry requested", "time": round(time.time(), 3)}])
