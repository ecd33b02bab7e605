"""Caption review costs the wizard pays: a bulk tag edit over N caption files, and the filter per keystroke.

    python bench/caption_edits.py [--files 100] [--filter-images 1000] [--dir PATH] [--repeat 3]

- bulk edit, before: every changed caption written atomically with two fsyncs (the file, then its folder), as
  `CaptionSet.add_tag` did; after: one fsync per file and one for the folder at the end (the code today).
- filter, before: a full rescan of the folder per keystroke (`CaptionSet.find`: list, read every caption, count
  tokens); after: the screen's index filtered in memory (`filter_items`).

The files go to a temporary folder under --dir (default: the current folder, so fsync hits a real disk; /tmp is
often a RAM disk). Figures are medians of --repeat runs; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.prep.captions import (  # noqa: E402
    CaptionSet, filter_items, join_tags, read_caption, split_tags, write_caption,
)

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7d6a4a40000000049454e44ae426082")


def make_set(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img-{i:05d}.png").write_bytes(PNG_1PX)
        (folder / f"img-{i:05d}.txt").write_text(f"a photo of thing {i}, red, outdoors, tag{i % 7}", "utf-8")


def add_tag_two_fsyncs(folder: Path, tag: str) -> int:
    """The old bulk edit: the same logic, each file written with its own folder fsync."""
    changed = 0
    for image in CaptionSet(folder).images():
        tags = split_tags(read_caption(image))
        if tag not in tags:
            write_caption(image, join_tags([tag, *tags]), sync_dir=True)
            changed += 1
    return changed


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--filter-images", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=Path.cwd())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="tiwiz-bench-captions-", dir=args.dir) as tmp:
        folder = Path(tmp) / "edits"
        make_set(folder, args.files)
        before, after = [], []
        for r in range(args.repeat):
            before.append(timed(lambda: add_tag_two_fsyncs(folder, f"old{r}")))
            after.append(timed(lambda: CaptionSet(folder).add_tag(f"new{r}", position="prepend")))
        load = os.getloadavg()[0]
        print(f"bulk add_tag over {args.files} caption files (disk under {args.dir}):")
        print(f"  before (two fsyncs per file): {statistics.median(before) * 1000:8.1f} ms")
        print(f"  after  (one fsync per file):  {statistics.median(after) * 1000:8.1f} ms")

        big = Path(tmp) / "filter"
        make_set(big, args.filter_images)
        rescans, in_memory = [], []
        index = CaptionSet(big).items()
        for text in ("r", "re", "red", "red,", "tag3")[: max(1, args.repeat + 2)]:
            rescans.append(timed(lambda: CaptionSet(big).find(text)))
            in_memory.append(timed(lambda: filter_items(index, text)))
        print(f"caption filter per keystroke over {args.filter_images} images:")
        print(f"  before (rescan the folder):   {statistics.median(rescans) * 1000:8.1f} ms")
        print(f"  after  (filter the index):    {statistics.median(in_memory) * 1000:8.1f} ms")
        print(f"load average (1 min) {load:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
