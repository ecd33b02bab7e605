"""Captions for the images `tiwiz preprocess` wrote: the captioner the options name (BLIP sentences or tagger tags),
loaded before any file is written so a missing model fails first; then every non-flipped output captioned in
batches (a flipped copy takes its original's caption) and combined with the source's existing caption."""

from __future__ import annotations

from pathlib import Path

from core.errors import TiwizError
from core.prep.captions import apply_existing_caption
from core.prep.options import PreprocessOptions
from core.prep.pool import write_file


def load_captioner(options: PreprocessOptions):
    """The captioner the options ask for (None for none). Fails with a message, before any work, when its model or
    its runtime is not there."""
    if options.captioner == "tagger":
        from core.prep.tagger import Tagger

        return Tagger(options.tagger.strip(), options.tag_settings(), batch_size=options.tagger_batch_size)
    if options.captioner != "blip":
        return None
    try:
        from core.prep.blip import BlipCaptioner, hub_source_is_local, looks_like_path
    except ImportError as exc:
        raise TiwizError(f"BLIP captioning is not available in this install ({exc}).") from None
    if not looks_like_path(options.blip):
        hub_source_is_local(options.blip)  # an uncached hub id offline fails here, before torch is even imported
    return BlipCaptioner(options.blip, device=None, batch_size=options.blip_batch_size)


def captioner_name(options: PreprocessOptions) -> str:
    return "the tagger" if options.captioner == "tagger" else "BLIP"


def write_captions(dest: Path, record: dict, caption: str, write=None) -> None:
    """Write `caption` beside every output of the source (flips share the caption); none when it is empty."""
    write = write or write_file
    caption = caption.strip()
    record["captions"] = []
    if not caption:
        return
    for out in record["outputs"]:
        name = str(Path(out["image"]).with_suffix(".txt"))
        write(dest / name, caption)
        record["captions"].append(name)
    record["caption"] = caption


def caption_outputs(captioner, options: PreprocessOptions, dest: Path, pending, report, sink) -> None:
    """Caption every non-flipped output of the `pending` (record, existing caption) pairs in batches, with progress
    events (phase "captions"); a flipped copy takes its original's caption."""
    jobs = [(record, existing, out) for record, existing in pending for out in record["outputs"] if not out["flipped"]]
    total = len(jobs)
    size = max(1, getattr(captioner, "batch_size", options.blip_batch_size))
    tags = options.captioner == "tagger"
    for start in range(0, total, size):
        batch = jobs[start:start + size]
        paths = [dest / out["image"] for _, _, out in batch]
        results = captioner.caption_results(paths, sink=sink, names=[p.name for p in paths])
        if len(results) != len(paths):
            raise TiwizError(f"{captioner_name(options)} returned {len(results)} captions for {len(paths)} images.")
        for (record, existing, out), result in zip(batch, results):
            generated = result.text if not result.problem else ""
            caption = apply_existing_caption(generated, existing, options.caption_action, tags=tags)
            record.setdefault("captions", [])
            if caption:
                _write_for_output(dest, record, out, caption, report)
        sink.emit("progress", done=min(start + size, total), total=total, file=batch[-1][2]["image"],
                  phase="captions")


def _write_for_output(dest: Path, record: dict, out: dict, caption: str, report) -> None:
    stem = Path(out["image"]).stem
    for target in record["outputs"]:  # this output and its flipped twin
        tstem = Path(target["image"]).stem
        if tstem == stem or (target["flipped"] and tstem == f"{stem}-flip"):
            name = f"{tstem}.txt"
            write_file(dest / name, caption)
            record["captions"].append(name)
            report.captions["written"] += 1
    record.setdefault("caption", caption)
