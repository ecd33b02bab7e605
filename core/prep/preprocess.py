"""`run_preprocess(src, dest, options, sink, workers=None) -> Report`: a folder of photos to a training set.

Worker processes decode and crop (`core.prep.per_file`, run by `core.prep.pool`); this parent process names
(`core.prep.sources`) and writes every output atomically, in source order, so names are deterministic and never
collide; then (optionally) captions the written images in batches with BLIP or a tagger (`core.prep.captioning`);
then writes `DEST/report.json`. The source folder is only ever read.

Events: `started` (total, workers), `progress` (done, total, file, phase), `skipped` (file, reason), `warning`
(message), `finished` (written, skipped, report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError
from core.prep.captioning import caption_outputs, captioner_name, load_captioner, write_captions
from core.prep.captions import apply_existing_caption, read_caption
from core.prep.options import PreprocessOptions
from core.prep.per_file import SourceResult, SourceTask
from core.prep.pool import Writer, default_workers, run_in_order, write_file
from core.prep.sources import Namer, display_name, list_sources, scan_sources

__all__ = ["Report", "run_preprocess", "default_workers", "list_sources", "scan_sources", "display_name"]

REPORT_NAME = "report.json"
DEBUG_DIR = "focal-debug"
DEST_CONTENT_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".txt", ".bmp", ".gif"})
# Enlarging a source by less than this is not worth a warning (a 1600×500 photo for 512×512 is enlarged 2.4%); it is
# still recorded in report.json as "upscaled".
UPSCALE_WARNING = 1.2


@dataclass
class Report:
    src: str
    dest: str
    options: dict
    sources: list[dict] = field(default_factory=list)  # one per source file, in order
    warnings: list[str] = field(default_factory=list)
    captions: dict = field(default_factory=dict)  # {"blip" or "tagger": model, "written": n, "error": msg}
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


def upscale_text(factor: float) -> str:
    """How much a source is enlarged, in words a user reads right: "by 2%" below 2×, "2.7×" from there."""
    return f"by {max(1, round((factor - 1) * 100))}%" if factor < 2 else f"{factor:.1f}×"


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
    captioner = load_captioner(options)  # fail fast, before any file is written

    run = _Run(src, dest, options, sink, sources, captioner)
    dest.mkdir(parents=True, exist_ok=True)
    sink.emit("started", total=len(sources), workers=workers, src=str(src), dest=str(dest))
    for name, reason in odd_entries:
        run.report.sources.append({"file": display_name(name), "status": "skipped", "outputs": [], "reason": reason})
        sink.emit("skipped", file=display_name(name), reason=reason)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tasks = [SourceTask(i, str(p), options, detect_faces=options.flip) for i, p in enumerate(sources)]
    try:
        run_in_order(tasks, workers, run.handle)
    except KeyboardInterrupt:
        run.writer.close()
        run.report.warnings.append(f"Interrupted after {run.done} of {len(sources)} files.")
        write_file(dest / REPORT_NAME, None, run.report.to_dict())
        raise
    except BaseException:
        run.writer.pool.shutdown(wait=False, cancel_futures=True)
        raise
    run.writer.close()  # every image is on disk before captioning reads them back
    run.report.stats = {"workers": workers, "seconds": round(time.perf_counter() - wall0, 3),
                        "parent_cpu_seconds": round(time.process_time() - cpu0, 3),
                        "worker_cpu_seconds": round(run.worker_cpu, 3) if workers > 1 else 0.0}
    run.summary_warnings()
    caption_error = run.caption() if captioner is not None else None
    write_file(dest / REPORT_NAME, None, run.report.to_dict())
    sink.emit("finished", written=len(run.report.written), skipped=len(run.report.skipped), report=REPORT_NAME)
    if caption_error:
        raise TiwizError(f"{caption_error}\nThe images were written to {dest} (see {REPORT_NAME}); captions are "
                         "missing for them.")
    return run.report


class _Run:
    """One preprocessing run's state: each worker result handled in source order, then the summary and captions."""

    def __init__(self, src: Path, dest: Path, options: PreprocessOptions, sink, sources: list[Path], captioner):
        self.dest, self.options, self.sink, self.captioner = dest, options, sink, captioner
        self.total = len(sources)
        self.report = Report(display_name(str(src)), display_name(str(dest)), options.to_dict())
        self.namer = Namer(sources)
        self.writer = Writer()
        self.pending: list[tuple[dict, str | None]] = []  # (source record, existing caption) for the captioner
        self.done, self.worker_cpu = 0, 0.0

    def handle(self, res: SourceResult) -> None:
        self.worker_cpu += res.timings.get("cpu", 0.0)
        shown = display_name(Path(res.path).name)
        record = {"file": shown, "status": "skipped" if res.reason else "written", "outputs": []}
        if res.size:
            record["size"] = list(res.size)
            record["format"] = res.format
        if res.notes:
            record["notes"] = res.notes
        if res.reason:
            record["reason"] = res.reason
            self.sink.emit("skipped", file=shown, reason=res.reason)
        else:
            self._written(res, record, shown)
        self.report.sources.append(record)
        self.done += 1
        self.sink.emit("progress", done=self.done, total=self.total, file=shown, phase="images")

    def _written(self, res: SourceResult, record: dict, shown: str) -> None:
        options, path = self.options, Path(res.path)
        existing = None
        if options.caption_action != "ignore":
            try:
                existing = read_caption(path)
            except TiwizError as exc:  # an unreadable caption file must not stop the run
                record["warnings"] = [display_name(str(exc))]
                self.sink.emit("warning", message=display_name(str(exc)), file=shown)
        base = self.namer.claim(path, [o.suffix for o in res.outputs])
        for out in res.outputs:
            name = f"{base}{out.suffix}.png"
            self.writer.submit(self.dest / name, out.png)
            entry = {"image": name, "kind": out.kind, "flipped": out.flipped}
            if out.crop_left_top is not None and res.size:  # SDXL size conditioning (core.training.dataset)
                entry.update(original_size=list(res.size), crop_left_top=list(out.crop_left_top))
            record["outputs"].append(entry)
        for suffix, png in res.debug:
            debug_name = f"{DEBUG_DIR}/{base}{suffix}.png"
            self.writer.submit(self.dest / debug_name, png)
            record.setdefault("debug", []).append(debug_name)
        if res.faces:
            record["faces"] = res.faces
        if res.upscale > 1.0:
            self._upscaled(res, record, shown)
        if self.captioner is not None and not (options.caption_action == "copy" and existing):
            self.pending.append((record, existing))
        else:
            write_captions(self.dest, record, apply_existing_caption("", existing, options.caption_action),
                           self.writer.submit)

    def _upscaled(self, res: SourceResult, record: dict, shown: str) -> None:
        record["upscaled"] = round(res.upscale, 3)
        if res.upscale < UPSCALE_WARNING:
            return
        w, h = res.size
        msg = (f"{shown} is {w}×{h}, smaller than {self.options.width}×{self.options.height}: enlarged "
               f"{upscale_text(res.upscale)}, expect a blurry training image")
        record.setdefault("warnings", []).append(msg)
        self.sink.emit("warning", message=msg, file=shown)

    def summary_warnings(self) -> None:
        report, options = self.report, self.options
        if options.flip:
            with_faces = [s["file"] for s in report.sources if s.get("faces")]
            if with_faces:
                shown = ", ".join(with_faces[:5]) + (" ..." if len(with_faces) > 5 else "")
                msg = (f"Faces were found in {len(with_faces)} image(s) ({shown}). Mirrored copies of a person harm "
                       "likeness (faces are not symmetric); consider running without --flip for a person.")
                report.warnings.append(msg)
                self.sink.emit("warning", message=msg)
        blurry = [s["file"] for s in report.sources if s.get("upscaled", 1) >= UPSCALE_WARNING]
        if blurry:
            report.warnings.append(f"{len(blurry)} image(s) were smaller than {options.width}×{options.height} and "
                                   f"were enlarged {int((UPSCALE_WARNING - 1) * 100)}% or more: "
                                   f"{', '.join(blurry[:5])}{' ...' if len(blurry) > 5 else ''}")

    def caption(self) -> str | None:
        """Caption the pending outputs; the error message when the captioner failed (the images stay)."""
        options = self.options
        self.report.captions = {options.captioner: getattr(options, options.captioner), "written": 0}
        error = None
        try:
            caption_outputs(self.captioner, options, self.dest, self.pending, self.report, self.sink)
        except TiwizError as exc:
            error = str(exc)
        except Exception as exc:  # a model failure must not lose the images already written
            error = f"Captioning with {captioner_name(options)} failed: {type(exc).__name__}: {exc}"
        if error:
            self.report.captions["error"] = error
            for record, existing in self.pending:  # keep the existing captions at least
                if not record.get("captions"):
                    write_captions(self.dest, record, apply_existing_caption("", existing, options.caption_action))
        return error
