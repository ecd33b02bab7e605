"""Figures for the shipped "shapes world" model (issue 6). Prints; writes PNG grids only when asked.

    python bench/world_quality.py                         # colour accuracy over 50 fixed-seed world prompts
    python bench/world_quality.py --ti                    # + textual inversion on the held-out concept (the demo)
    python bench/world_quality.py --ti --skip-world --seeds 0,1,2,3   # the same with four training seeds
    python bench/world_quality.py --ti --images-dir docs/images   # also write the README grids

World quality: 50 prompts `a COLOR SHAPE on a BG background` (fixed seeds), generated with DDIM; each image's dominant
foreground and background colours (nearest palette colour per pixel; background = commonest on the border) are
compared with the prompt. Textual inversion: our trainer (core.training.trainer) on the demo concept at 64 px on CPU; the
fixed-seed validation loss of the init embedding vs the learned one, and the colour-histogram distance to the
concept's images of images generated with each (ratio = learned / init; < 0.5 is the target).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.world import demo_job as demo

from core.world import shapes  # noqa: E402


def world_prompts(n: int = 50, seed: int = 1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        spec = shapes.random_spec(rng)
        out.append((spec.color, spec.shape, spec.background))
    return out


def world_quality(model_dir, *, n: int = 50, steps: int = 25, cfg: float = 5.0, grid_png=None) -> dict:
    pipe = demo.load_pipeline(model_dir)
    triples = world_prompts(n)
    prompts = [shapes.caption_for(c, s, b) for c, s, b in triples]
    images = []
    for i in range(0, n, 25):
        images += demo.generate(pipe, prompts[i:i + 25], list(range(i, min(n, i + 25))), steps=steps, cfg=cfg)
    fg_ok = bg_ok = both = 0
    for (color, _shape, bg), image in zip(triples, images):
        got_fg, got_bg = shapes.dominant_colors(image)
        fg_ok += got_fg == color
        bg_ok += got_bg == bg
        both += got_fg == color and got_bg == bg
    if grid_png:
        from core.atomic import atomic_write_with

        rows = [images[i:i + 10] for i in range(0, min(n, 40), 10)]
        atomic_write_with(grid_png, lambda tmp: demo.grid(rows).save(tmp, format="PNG"))
    return {"n": n, "fg": fg_ok / n, "bg": bg_ok / n, "both": both / n, "cfg": cfg, "steps": steps}


def textual_inversion(workdir: Path, steps: int, grid_png=None, model_dir=None, seed: int = 0, **overrides) -> dict:
    from core.training.config import TrainConfig
    from core.events import ListSink
    from core.training.trainer import Trainer

    if model_dir is not None:  # evaluate another model folder: link it where prepare_demo expects the demo model
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "model").symlink_to(Path(model_dir).resolve())
    prep = demo.prepare_demo(workdir, steps=steps)
    cfg = dict(prep["config"], preview_every=0, validate_every=steps, save_every=steps, seed=seed, **overrides)
    sink = ListSink()
    t0 = time.time()
    Trainer(TrainConfig.from_dict(cfg), Path(cfg["output"]), sink).run()
    seconds = time.time() - t0
    vals = [e["val_loss"] for e in sink.events if e["type"] == "validation"]
    emb = Path(cfg["output"]) / f"{cfg['name']}.safetensors"
    dist = demo.before_after(prep["model_dir"], prep["data_dir"], emb, grid_png or workdir / "before_after.png")
    return {"steps": steps, "seconds": seconds, "val_first": vals[0], "val_last": vals[-1],
            "val_drop": 1 - vals[-1] / vals[0], **dist}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a model folder (default: the shipped world model)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--ti", action="store_true", help="also run textual inversion on the held-out concept")
    p.add_argument("--steps", type=int, default=None, help="textual-inversion steps (default: the demo's)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds for the textual inversion (the "
                   "concept images stay the same); the grid is written for the first")
    p.add_argument("--lr", help="override the demo's learning rate")
    p.add_argument("--vectors", type=int, help="override the demo's vectors per token")
    p.add_argument("--loss-weighting", choices=["none", "velocity"], help="override the demo's loss weighting")
    p.add_argument("--skip-world", action="store_true", help="only the textual-inversion part")
    p.add_argument("--images-dir", type=Path, help="write world_samples.png and demo_before_after.png here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from core.models.builtin import write_demo_model

            model_dir = write_demo_model(Path(tmp) / "model")
        grid = args.images_dir / "world_samples.png" if args.images_dir else None
        if not args.skip_world:
            q = world_quality(model_dir, n=args.n, cfg=args.cfg, grid_png=grid)
            print(f"world quality over {q['n']} fixed-seed prompts (DDIM {q['steps']} steps, CFG {q['cfg']}): "
                  f"foreground {q['fg']:.0%}, background {q['bg']:.0%}, both {q['both']:.0%}", flush=True)
        if args.ti:
            from core.world.demo_job import DEMO_STEPS

            steps = args.steps or DEMO_STEPS
            overrides = {k: v for k, v in (("lr", args.lr), ("vectors", args.vectors),
                                           ("loss_weighting", args.loss_weighting)) if v is not None}
            for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
                grid = args.images_dir / "demo_before_after.png" if args.images_dir and i == 0 else None
                t = textual_inversion(Path(tmp) / f"demo-{seed}", steps, grid, model_dir=args.model, seed=seed,
                                      **overrides)
                print(f"textual inversion (seed {seed}), {t['steps']} steps in {t['seconds']:.0f}s: fixed-seed "
                      f"validation loss {t['val_first']:.4f} -> {t['val_last']:.4f} ({t['val_drop']:.1%} lower); "
                      f"colour-histogram distance to the concept: init {t['distance_before']:.3f}, learned "
                      f"{t['distance_after']:.3f}, ratio {t['ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
