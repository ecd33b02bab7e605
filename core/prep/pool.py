"""Running `tiwiz preprocess`'s per-file work: a pool of worker processes whose results come back in source order
(a crashed decoder named, not fatal), and the threads that write the outputs atomically."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.errors import TiwizError
from core.prep.per_file import SourceResult, SourceTask, init_worker, process_source


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a clean server process, not from a parent that may hold threads or torch.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["core.prep.per_file", "core.prep.focal", "core.prep.split", "cv2"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(True,))


def run_in_order(tasks: list[SourceTask], workers: int, handle: Callable[[SourceResult], None]) -> None:
    """Run tasks and call `handle` with each result in task order. At most 4 results per worker wait in memory."""
    if workers <= 1:
        init_worker()
        for task in tasks:
            handle(process_source(task))
        return
    remaining = list(tasks)
    try:
        with _pool(workers) as pool:
            try:
                _drain(pool, remaining, workers * 4, handle)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        return
    except BrokenProcessPool:
        pass
    # A worker died (a decoder crash or the OOM killer). Go on one file at a time, so the culprit can be named.
    while remaining:
        try:
            with _pool(1) as pool:
                _drain(pool, remaining, 1, handle)
        except BrokenProcessPool:
            task = remaining.pop(0)  # with a window of 1, the file in flight is the one that killed the worker
            handle(SourceResult(task.index, task.path,
                                reason="the image decoder crashed on this file (its worker process died)"))


def _drain(pool, remaining: list[SourceTask], window: int, handle) -> None:
    """Submit from the front of `remaining`, hand results over in order, and pop each task once handled."""
    futures: dict[int, object] = {}
    done: dict[int, SourceResult] = {}
    submitted = 0
    while remaining:
        while submitted < len(remaining) and len(futures) + len(done) < window:
            task = remaining[submitted]
            futures[task.index] = pool.submit(process_source, task)
            submitted += 1
        finished, _ = wait(list(futures.values()), return_when=FIRST_COMPLETED)
        for index in [i for i, f in futures.items() if f in finished]:
            done[index] = futures.pop(index).result()  # BrokenProcessPool propagates from here
        while remaining and remaining[0].index in done:
            task = remaining.pop(0)
            submitted -= 1
            handle(done.pop(task.index))


class Writer:
    """Writes output files on a few threads: each atomic write ends in fsyncs (~15 ms), which would otherwise make
    this parent process the bottleneck of the worker pool. `check()` re-raises the first failure."""

    def __init__(self, threads: int = 4):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiwiz-write")
        self.futures = []

    def submit(self, path: Path, data) -> None:
        self.futures.append(self.pool.submit(write_file, path, data))
        if len(self.futures) > 64:
            self.check(wait_all=False)

    def check(self, wait_all: bool = True) -> None:
        if wait_all:
            wait(self.futures)
        still = []
        for f in self.futures:
            if f.done():
                f.result()  # raises TiwizError for a failed write
            else:
                still.append(f)
        self.futures = still

    def close(self) -> None:
        try:
            self.check()
        finally:
            self.pool.shutdown(wait=True)


def write_file(path: Path, data: bytes | str | None, obj=None) -> None:
    """Write bytes, text or (with `obj`) JSON atomically; a failure is a TiwizError that says what to check."""
    try:
        if obj is not None:
            atomic_write_json(path, obj)
        elif isinstance(data, str):
            atomic_write_text(path, data)
        else:
            atomic_write_bytes(path, data)
    except OSError as exc:
        raise TiwizError(f"Cannot write {path}: {exc.strerror or exc}. Check free space and permissions.") from None
