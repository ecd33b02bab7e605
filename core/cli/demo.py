"""`tiwiz demo`: the whole job on the embedded default, on a CPU, in about a minute.

Writes the shipped "shapes world" model, 16 images of a concept it has never seen (a yellow heart on purple),
trains an embedding for it with the real trainer, then renders a before/after grid.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a demo embedding on the built-in shapes-world model (CPU, about a minute)",
        description="Write the built-in demo model and images of a held-out concept, train an embedding for it, and "
                    "render a before/after grid. Example: tiwiz demo --output tiwiz-demo --steps 300",
    )
    p.add_argument("--output", type=Path, default=Path("tiwiz-demo"), help="demo folder (default: ./tiwiz-demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed for the concept images and training (default: 0)")
    p.add_argument("--random-model", action="store_true",
                   help="use the random-weight tiny model instead (exercises the code; learns nothing visible)")
    p.set_defaults(func=run_demo)


class _Progress:
    """Prints a one-line progress display from trainer events."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.val = None
        self.tty = self.stream.isatty()

    def __call__(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "validation":
            self.val = event.get("val_loss")
        elif kind == "step":
            step, total = event.get("step", 0), event.get("max_steps", 0)
            it_s = event.get("it_s") or 0.0
            eta = (total - step) / it_s if it_s else 0.0
            val = f" val {self.val:.4f}" if self.val is not None else ""
            line = (f"step {step}/{total}  {it_s:.1f} it/s  ETA {eta:.0f}s  loss {event.get('loss', 0):.4f}{val}  "
                    f"lr {event.get('lr', 0):.3g}")
            if self.tty:
                self.stream.write("\r" + line.ljust(78))
            elif step == total or step % 25 == 0:
                self.stream.write(line + "\n")
            self.stream.flush()
        elif kind in ("warning", "error"):
            self._newline()
            print(f"{kind}: {event.get('message')}", file=self.stream)
        elif kind in ("finished", "stopped"):
            self._newline()

    def _newline(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _train_detached(config: dict, progress) -> Path:
    """Train through the product's own path: a detached worker (core.runs.api), followed here."""
    from core.runs import api as runapi
    from core.errors import TiwizError

    run_dir = Path(runapi.start_run(config))
    try:
        for event in runapi.follow(run_dir).iter(interval=0.2):
            progress(event)
            if event.get("type") == "finished":
                return run_dir
            if event.get("type") == "stopped":
                raise TiwizError(f"demo training stopped ({event.get('reason')}); run folder: {run_dir}")
            if event.get("type") == "error":
                raise TiwizError(f"demo training failed: {event.get('message')} (run folder: {run_dir})")
    except KeyboardInterrupt:
        runapi.send_command(run_dir, "stop")
        print(f"\nasked the demo worker to stop; its run folder is {run_dir}", file=sys.stderr)
        raise
    raise TiwizError(f"the demo worker ended without finishing; see {run_dir / 'events.jsonl'}")


def _train_in_process(config: dict, progress) -> Path:
    from core.training.config import TrainConfig
    from core.events import CallbackSink
    from core.training.trainer import Trainer

    out = Path(config["output"])
    Trainer(TrainConfig.from_dict(config), out, CallbackSink(progress)).run()
    return out


def _has_runapi() -> bool:
    try:
        from core.runs import api as runapi
    except ImportError:
        return False
    return hasattr(runapi, "start_run") and hasattr(runapi, "follow")


def run_demo(args) -> int:
    from core.world.demo_job import DEMO_STEPS, before_after, prepare_demo
    from core.errors import TiwizError

    steps = args.steps if args.steps is not None else DEMO_STEPS
    if steps < 1:
        raise TiwizError("--steps: must be at least 1")
    out = args.output.resolve()
    if out.exists() and not out.is_dir():
        raise TiwizError(f"--output: {out} exists and is not a folder")
    t0 = time.time()
    print(f"Preparing the demo in {out} ...", flush=True)
    prep = prepare_demo(out, steps=steps, seed=args.seed, random_model=args.random_model)
    print(f"  model:  {prep['model_dir']}  (the built-in shapes-world model)")
    print(f"  images: {prep['data_dir']}  ({len(list(Path(prep['data_dir']).glob('*.png')))} images of a concept the "
          "model has never been captioned with)")
    progress = _Progress()
    print(f"Training the embedding '{prep['config']['name']}' for {steps} steps ...", flush=True)
    if _has_runapi():
        run_dir = _train_detached(prep["config"], progress)
    else:
        run_dir = _train_in_process(prep["config"], progress)
    name = prep["config"]["name"]
    emb = run_dir / f"{name}.safetensors"
    if not emb.is_file():
        raise TiwizError(f"demo training ended without an embedding ({emb} is missing); see {run_dir}")
    print("Rendering the before/after grid ...", flush=True)
    result = before_after(prep["model_dir"], prep["data_dir"], emb, out / "before_after.png")
    previews = sorted((run_dir / "previews").glob("*.png"), key=lambda p: p.stat().st_mtime)
    print(f"\nDone in {time.time() - t0:.0f}s. Results:")
    print(f"  embedding:  {run_dir / (name + '.pt')}  and  {emb}")
    if previews:
        print(f"  previews:   {run_dir / 'previews'}  ({len(previews)} images, latest {previews[-1].name})")
    print(f"  grid:       {result['grid']}  (top: training images; middle: init text '{prep['config']['init_text']}';"
          " bottom: learned embedding)")
    print(f"  colour distance to the concept: before {result['distance_before']:.3f}, after "
          f"{result['distance_after']:.3f} (ratio {result['ratio']:.2f})")
    print(f"  run folder: {run_dir}  (loss.csv, config.toml)")
    return 0
