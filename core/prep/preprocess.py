"""`run_preprocess(src, dest, options, sink, workers=None) -> Report`: a folder of photos to a training set.

Worker processes decode and crop (`core.prep.per_file`); this parent process names and writes every output
atomically, in source order, so names are deterministic and never collide; then (optionally) BLIP-captions the
written images in batches; then writes `DEST/report.json`. The source folder is only ever read.

Events: `started` (total, workers), `progress` (done, total, file, phase), `skipped` (file, reason), `warning`
(message), `finished` (written, skipped, report).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.prep.captions import apply_existing_caption, read_caption
from core.errors import TiwizError
from core.prep.options import PreprocessOptions
from core.prep.per_file import SourceResult, SourceTask, init_worker, process_source

REPORT_NAME = "report.json"
DEBUG_DIR = "focal-debug"
SIDECAR_EXTENSIONS = frozenset({".txt", ".caption", ".json", ".xmp", ".tags", ".toml", ".yaml", ".yml"})
DEST_CONTENT_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".txt", ".bmp", ".gif"})


@dataclass
class Report:
    src: str
    dest: str
    options: dict
    sources: list[dict] = field(default_factory=list)  # one per source file, in order
    warnings: list[str] = field(default_factory=list)
    captions: dict = field(default_factory=dict)  # {"blip": model, "written": n, "error": msg}
    stats: dict = field(default_factory=dict)  # seconds, parent/worker CPU seconds, workers

    @property
    def written(self) -> list[str]:
        """Names (relative to dest) of the images written."""
        return [o["image"] for s in self.sources for o in s.get("outputs", [])]

    @property
    def skipped(self) -> list[dict]:
        return [{"file": s["file"], "reason": s["reason"]} for s in self.sources if s["status"] == "skipped"]

    @property
    def exit_code(self) -> int:
        return 0 if self.written else 1

    def to_dict(self) -> dict:
        return {"version": 1, "src": self.src, "dest": self.dest, "options": self.options,
                "written": len(self.written), "skipped": len(self.skipped), "warnings": self.warnings,
                "captions": self.captions, "stats": self.stats, "sources": self.sources}


# --- inputs -------------------------------------------------------------------------------------------------------

def _check_folders(src: Path, dest: Path, overwrite: bool) -> tuple[Path, Path]:
    if not src.exists():
        raise TiwizError(f"Source folder {src} does not exist.")
    if not src.is_dir():
        raise TiwizError(f"Source {src} is not a folder.")
    src_r, dest_r = src.resolve(), dest.resolve()
    if dest_r == src_r:
        raise TiwizError(f"DEST is the same folder as SRC ({src}); choose another folder, so the source images are "
                         "never overwritten.")
    if src_r in dest_r.parents:
        raise TiwizError(f"DEST {dest} is inside SRC {src}; choose a folder outside the source folder.")
    if dest.exists() and not dest.is_dir():
        raise TiwizError(f"DEST {dest} exists and is not a folder.")
    if dest.is_dir() and not overwrite:
        clash = sorted(p.name for p in dest.iterdir()
                       if p.is_file() and p.suffix.lower() in DEST_CONTENT_EXTENSIONS and not p.name.startswith("."))
        if clash:
            raise TiwizError(f"DEST {dest} already holds {len(clash)} image/caption file(s) (e.g. {clash[0]}); "
                             "choose an empty folder, or pass --overwrite to replace files with the same names.")
    return src_r, dest_r


def list_sources(src: Path) -> list[Path]:
    """Files in `src` to try, sorted by name. Hidden files, folders and caption/sidecar files are left out quietly."""
    return scan_sources(src)[0]


def scan_sources(src: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files to try, [(name, reason)] for odd entries): symlink loops, broken symlinks, FIFOs, sockets and devices
    get a reason instead of crashing the scan or vanishing. Hidden files, folders and sidecars stay quiet."""
    out, odd = [], []
    for entry in os.scandir(src):
        if entry.name.startswith(".") or Path(entry.name).suffix.lower() in SIDECAR_EXTENSIONS:
            continue
        reason = _odd_entry_reason(entry)
        if reason is None:
            out.append(Path(entry.path))
        elif reason:
            odd.append((entry.name, reason))
    return sorted(out, key=lambda p: p.name), sorted(odd)


def _odd_entry_reason(entry) -> str | None:
    """None for a regular file, "" for a folder (skipped quietly), else why the entry cannot be used."""
    import errno
    import stat

    try:
        if entry.is_file():
            return None
        if entry.is_dir():
            return ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself); skipped"
        return f"cannot read it ({exc.strerror or exc}); skipped"
    if entry.is_symlink():
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return f"a broken symlink: its target {display_name(target)} does not exist; skipped"
    try:
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc}); skipped"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{kind}, not an image file; skipped"


def display_name(name: str) -> str:
    """A file name as text that survives JSON and UTF-8 output: bytes that are not UTF-8 become `\\xe9`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class _Namer:
    """Deterministic, collision-free output stems: the source stem, or stem-ext when two sources share a stem
    (`dup.jpg`, `dup.png` -> `dup-jpg`, `dup-png`), then -2, -3... until every name the source needs is free.
    Comparisons ignore case so the set also survives a case-insensitive file system."""

    def __init__(self, sources: Iterable[Path]):
        stems: dict[str, int] = {}
        for p in sources:
            stems[p.stem.casefold()] = stems.get(p.stem.casefold(), 0) + 1
        self.shared = {s for s, n in stems.items() if n > 1}
        self.claimed: set[str] = set()

    def claim(self, source: Path, suffixes: list[str]) -> str:
        base = source.stem or source.name
        base = os.fsencode(base).decode("utf-8", "replace").replace("\ufffd", "_")  # outputs get UTF-8 names
        if base.casefold() in self.shared:
            ext = source.suffix.lstrip(".").lower()
            base = f"{base}-{ext}" if ext else base
        candidate, n = base, 1
        while any((candidate + s).casefold() in self.claimed for s in suffixes):
            n += 1
            candidate = f"{base}-{n}"
        self.claimed.update((candidate + s).casefold() for s in suffixes)
        return candidate


# --- running the workers ------------------------------------------------------------------------------------------

def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a clean server process, not from a parent that may hold threads or torch.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["core.prep.per_file", "core.prep.focal", "core.prep.split", "cv2"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(True,))


def _run_in_order(tasks: list[SourceTask], workers: int, handle: Callable[[SourceResult], None]) -> None:
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


# --- the run ------------------------------------------------------------------------------------------------------

def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_preprocess(src, dest, options: PreprocessOptions | None = None, sink=None,
                   workers: int | None = None) -> Report:
    options = (options or PreprocessOptions()).validate()
    if sink is None:
        from core.events import ListSink

        sink = ListSink()
    src, dest = _check_folders(Path(src), Path(dest), options.overwrite)
    sources, odd_entries = scan_sources(src)
    workers = max(1, min(workers or default_workers(), max(1, len(sources))))

    if not sources:  # before anything is written: an empty run leaves no folder or report behind
        n_odd = len(odd_entries)
        skipped = f" ({n_odd} other entr{'y' if n_odd == 1 else 'ies'} skipped)" if n_odd else ""
        raise TiwizError(f"No image files in {display_name(str(src))}{skipped}; nothing was written.")

    captioner = None
    if options.blip:
        captioner = _load_captioner(options)  # fail fast, before any file is written

    report = Report(display_name(str(src)), display_name(str(dest)), options.to_dict())
    dest.mkdir(parents=True, exist_ok=True)
    namer = _Namer(sources)
    sink.emit("started", total=len(sources), workers=workers, src=str(src), dest=str(dest))
    for name, reason in odd_entries:
        report.sources.append({"file": display_name(name), "status": "skipped", "outputs": [], "reason": reason})
        sink.emit("skipped", file=display_name(name), reason=reason)
    if not sources:
        report.warnings.append(f"No files found in {src}.")
        sink.emit("warning", message=report.warnings[-1])

    pending_captions: list[tuple[dict, str | None]] = []  # (source record, existing caption) for BLIP
    done = 0
    wall0, cpu0, worker_cpu = time.perf_counter(), time.process_time(), 0.0

    def handle(res: SourceResult) -> None:
        nonlocal done, worker_cpu
        worker_cpu += res.timings.get("cpu", 0.0)
        path = Path(res.path)
        shown = display_name(path.name)
        record = {"file": shown, "status": "skipped" if res.reason else "written", "outputs": []}
        if res.size:
            record["size"] = list(res.size)
            record["format"] = res.format
        if res.notes:
            record["notes"] = res.notes
        if res.reason:
            record["reason"] = res.reason
            sink.emit("skipped", file=shown, reason=res.reason)
        else:
            existing = None
            if options.caption_action != "ignore":
                try:
                    existing = read_caption(path)
                except TiwizError as exc:  # an unreadable caption file must not stop the run
                    record["warnings"] = [display_name(str(exc))]
                    sink.emit("warning", message=display_name(str(exc)), file=shown)
            base = namer.claim(path, [o.suffix for o in res.outputs])
            for out in res.outputs:
                name = f"{base}{out.suffix}.png"
                writer.submit(dest / name, out.png)
                entry = {"image": name, "kind": out.kind, "flipped": out.flipped}
                if out.crop_left_top is not None and res.size:  # SDXL size conditioning (core.training.dataset)
                    entry.update(original_size=list(res.size), crop_left_top=list(out.crop_left_top))
                record["outputs"].append(entry)
            for suffix, png in res.debug:
                debug_name = f"{DEBUG_DIR}/{base}{suffix}.png"
                writer.submit(dest / debug_name, png)
                record.setdefault("debug", []).append(debug_name)
            if res.faces:
                record["faces"] = res.faces
            if res.upscale > 1.0:
                w, h = res.size
                msg = (f"{shown} is {w}×{h}, smaller than {options.width}×{options.height}: upscaled "
                       f"{res.upscale:.1f}×, expect a blurry training image")
                record["upscaled"] = round(res.upscale, 2)
                record.setdefault("warnings", []).append(msg)
                sink.emit("warning", message=msg, file=shown)
            if captioner is not None and not (options.caption_action == "copy" and existing):
                pending_captions.append((record, existing))
            else:
                _write_captions(dest, record, apply_existing_caption("", existing, options.caption_action),
                                writer.submit)
        report.sources.append(record)
        done += 1
        sink.emit("progress", done=done, total=len(sources), file=shown, phase="images")

    tasks = [SourceTask(i, str(p), options, detect_faces=options.flip) for i, p in enumerate(sources)]
    writer = _Writer()
    try:
        _run_in_order(tasks, workers, handle)
    except KeyboardInterrupt:
        writer.close()
        report.warnings.append(f"Interrupted after {done} of {len(sources)} files.")
        _write(dest / REPORT_NAME, None, report.to_dict())
        raise
    except BaseException:
        writer.pool.shutdown(wait=False, cancel_futures=True)
        raise
    writer.close()  # every image is on disk before captioning reads them back
    report.stats = {"workers": workers, "seconds": round(time.perf_counter() - wall0, 3),
                    "parent_cpu_seconds": round(time.process_time() - cpu0, 3),
                    "worker_cpu_seconds": round(worker_cpu, 3) if workers > 1 else 0.0}

    if options.flip:
        with_faces = [s["file"] for s in report.sources if s.get("faces")]
        if with_faces:
            shown = ", ".join(with_faces[:5]) + (" ..." if len(with_faces) > 5 else "")
            msg = (f"Faces were found in {len(with_faces)} image(s) ({shown}). Mirrored copies of a person harm "
                   "likeness (faces are not symmetric); consider running without --flip for a person.")
            report.warnings.append(msg)
            sink.emit("warning", message=msg)
    upscaled = [s["file"] for s in report.sources if s.get("upscaled")]
    if upscaled:
        report.warnings.append(f"{len(upscaled)} image(s) were smaller than {options.width}×{options.height} and "
                               f"were upscaled: {', '.join(upscaled[:5])}{' ...' if len(upscaled) > 5 else ''}")

    caption_error = None
    if captioner is not None:
        report.captions = {"blip": options.blip, "written": 0}
        try:
            _blip_captions(captioner, options, dest, pending_captions, report, sink)
        except TiwizError as exc:
            caption_error = str(exc)
        except Exception as exc:  # a model failure must not lose the images already written
            caption_error = f"BLIP captioning failed: {type(exc).__name__}: {exc}"
        if caption_error:
            report.captions["error"] = caption_error
            for record, existing in pending_captions:  # keep the existing captions at least
                if not record.get("captions"):
                    _write_captions(dest, record, apply_existing_caption("", existing, options.caption_action))

    _write(dest / REPORT_NAME, None, report.to_dict())
    sink.emit("finished", written=len(report.written), skipped=len(report.skipped), report=REPORT_NAME)
    if caption_error:
        raise TiwizError(f"{caption_error}\nThe images were written to {dest} (see {REPORT_NAME}); captions are "
                         "missing for them.")
    return report


class _Writer:
    """Writes output files on a few threads: each atomic write ends in fsyncs (~15 ms), which would otherwise make
    this parent process the bottleneck of the worker pool. `check()` re-raises the first failure."""

    def __init__(self, threads: int = 4):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tiwiz-write")
        self.futures = []

    def submit(self, path: Path, data) -> None:
        self.futures.append(self.pool.submit(_write, path, data))
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


def _write(path: Path, data: bytes | None, obj=None) -> None:
    try:
        if obj is not None:
            atomic_write_json(path, obj)
        elif isinstance(data, str):
            atomic_write_text(path, data)
        else:
            atomic_write_bytes(path, data)
    except OSError as exc:
        raise TiwizError(f"Cannot write {path}: {exc.strerror or exc}. Check free space and permissions.") from None


def _write_captions(dest: Path, record: dict, caption: str, write=None) -> None:
    """Write `caption` beside every output of the source (flips share the caption); none when it is empty."""
    write = write or _write
    caption = caption.strip()
    record["captions"] = []
    if not caption:
        return
    for out in record["outputs"]:
        name = str(Path(out["image"]).with_suffix(".txt"))
        write(dest / name, caption)
        record["captions"].append(name)
    record["caption"] = caption


def _load_captioner(options: PreprocessOptions):
    try:
        from core.prep.blip import BlipCaptioner, hub_source_is_local, looks_like_path
    except ImportError as exc:
        raise TiwizError(f"BLIP captioning is not available in this install ({exc}).") from None
    if not looks_like_path(options.blip):
        hub_source_is_local(options.blip)  # an uncached hub id offline fails here, before torch is even imported
    return BlipCaptioner(options.blip, device=None, batch_size=options.blip_batch_size)


def _blip_captions(captioner, options: PreprocessOptions, dest: Path, pending, report: Report, sink) -> None:
    """Caption every non-flipped output in batches; a flipped copy takes its original's caption."""
    from PIL import Image

    jobs = []  # (record, existing, [non-flipped output dicts])
    for record, existing in pending:
        for out in record["outputs"]:
            if not out["flipped"]:
                jobs.append((record, existing, out))
    total = len(jobs)
    size = max(1, options.blip_batch_size)
    for start in range(0, total, size):
        batch = jobs[start:start + size]
        paths = [dest / out["image"] for _, _, out in batch]
        if hasattr(captioner, "caption_results"):  # reports unusable captions as warnings naming the image
            results = captioner.caption_results(paths, sink=sink, names=[p.name for p in paths])
            captions = [r.text if not r.problem else "" for r in results]
        else:
            captions = captioner.caption([Image.open(p).convert("RGB") for p in paths])
        if len(captions) != len(paths):
            raise TiwizError(f"BLIP returned {len(captions)} captions for {len(paths)} images.")
        for (record, existing, out), generated in zip(batch, captions):
            caption = apply_existing_caption(generated, existing, options.caption_action)
            record.setdefault("captions", [])
            if caption:
                stem = Path(out["image"]).stem
                for target in record["outputs"]:  # this output and its flipped twin
                    tstem = Path(target["image"]).stem
                    if tstem == stem or (target["flipped"] and tstem == f"{stem}-flip"):
                        name = f"{tstem}.txt"
                        _write(dest / name, caption)
                        record["captions"].append(name)
                        report.captions["written"] += 1
                record.setdefault("caption", caption)
        sink.emit("progress", done=min(start + size, total), total=total, file=batch[-1][2]["image"],
                  phase="captions")
