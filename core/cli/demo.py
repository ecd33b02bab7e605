"""`tiwiz demo`: the whole job on the embedded default, on a CPU (18.4 s on an idle 2-core machine when last measured
idle; bench/RESULTS.md).

Writes the shipped "shapes world" model, 16 images of a concept it has never seen (a yellow heart on purple),
trains an embedding for it with the real trainer, then renders a before/after grid.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from core.safe_text import safe_print


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a demo embedding on the built-in shapes-world model (on the CPU; seconds to minutes, "
                     "by how busy the machine is)",
        description="Write the built-in demo model and images of a held-out concept, train an embedding for it, and "
                    "render a before/after grid. Example: tiwiz demo --output tiwiz-demo --steps 300",
    )
    p.add_argument("--output", type=Path, default=Path("tiwiz-demo"), help="demo folder (default: ./tiwiz-demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed for the concept images and training (default: 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "auto", "cuda"),
                   help="where to train (default: cpu, which the demo is sized for; auto/cuda use the GPU when there "
                        "is one)")
    p.add_argument("--random-model", action="store_true",
                   help="use the random-weight tiny model instead (exercises the code; learns nothing visible)")
    p.set_defaults(func=run_demo)


def _train_detached(config: dict, progress) -> Path:
    """Train through the product's own path: a detached worker (core.runs.api), followed here."""
    from core.errors import TiwizError
    from core.runs import api as runapi
    from core.runs.run_events import RunPhase

    run_dir = Path(runapi.start_run(config))
    try:
        for event in runapi.follow(run_dir).iter(interval=0.2):
            progress.live(event)
        progress.end()
    except KeyboardInterrupt:
        runapi.send_command(run_dir, "stop")
        safe_print(f"\nasked the demo worker to stop; its run folder is {run_dir}", file=sys.stderr)
        raise
    state = progress.state
    if state.phase == RunPhase.FINISHED:
        return run_dir
    if state.phase == RunPhase.STOPPED:
        raise TiwizError(f"demo training stopped ({state.reason}); run folder: {run_dir}")
    if state.phase == RunPhase.FAILED:
        raise TiwizError(f"demo training failed: {state.error or state.reason} (run folder: {run_dir})")
    raise TiwizError(f"the demo worker ended without finishing; see {run_dir / 'events.jsonl'}")


def _grid_progress(tty: bool):
    """Where the before/after render says how far it is: a line redrawn in place on a terminal, else a line at the
    halfway point and at the end (so a log shows it is not stuck)."""
    said = set()

    def progress(done: int, total: int) -> None:
        if tty:
            sys.stdout.write(f"\r  denoising step {done}/{total}" + ("\n" if done == total else ""))
            sys.stdout.flush()
        elif done in (total // 2, total) and done not in said:
            said.add(done)
            safe_print(f"  denoising step {done}/{total}", flush=True)

    return progress


def run_demo(args) -> int:
    from core.world.demo_job import DEMO_STEPS, before_after, prepare_demo
    from core.errors import TiwizError
    from core.training.threads import free_cores

    # The cores the rest of the machine leaves free, read before the demo's own work (writing the model, importing
    # torch) raises the load average: read later, an idle 2-core machine looked half busy and the demo trained on one
    # thread, twice as long (39 s instead of 18; bench/RESULTS.md).
    threads = free_cores()

    steps = args.steps if args.steps is not None else DEMO_STEPS
    if steps < 1:
        raise TiwizError("--steps: must be at least 1")
    out = args.output.resolve()
    if out.exists() and not out.is_dir():
        raise TiwizError(f"--output: {out} exists and is not a folder")
    t0 = time.time()
    safe_print(f"Preparing the demo in {out} ...", flush=True)
    prep = prepare_demo(out, steps=steps, seed=args.seed, random_model=args.random_model)
    safe_print(f"  model:  {prep['model_dir']}  (the built-in shapes-world model)")
    safe_print(f"  images: {prep['data_dir']}  ({len(list(Path(prep['data_dir']).glob('*.png')))} images of a concept the "
          "model has never been captioned with)")
    from core.cli.progress import ProgressView

    prep["config"]["device"] = getattr(args, "device", "cpu")
    prep["config"]["threads"] = threads
    safe_print(f"Training the embedding '{prep['config']['name']}' for {steps} steps ...", flush=True)
    run_dir = _train_detached(prep["config"], ProgressView(out=sys.stdout))
    name = prep["config"]["name"]
    emb = run_dir / f"{name}.safetensors"
    if not emb.is_file():
        raise TiwizError(f"demo training ended without an embedding ({emb} is missing); see {run_dir}")
    safe_print("Rendering the before/after grid (16 images: 8 with the init text, 8 with the embedding) ...", flush=True)
    result = before_after(prep["model_dir"], prep["data_dir"], emb, out / "before_after.png", threads=threads,
                          progress=_grid_progress(sys.stdout.isatty()))
    previews = sorted((p for p in (run_dir / "previews").glob("*.png") if p.name != "sheet.png"),
                      key=lambda p: p.stat().st_mtime)
    safe_print(f"\nDone in {time.time() - t0:.0f}s. Results:")
    safe_print(f"  embedding:  {run_dir / (name + '.pt')}  and  {emb}")
    if previews:
        safe_print(f"  previews:   {run_dir / 'previews'}  ({len(previews)} images, latest {previews[-1].name}; "
                   "all of them by step in sheet.png)")
    safe_print(f"  grid:       {result['grid']}  (top: training images; middle: init text '{prep['config']['init_text']}';"
          " bottom: learned embedding)")
    safe_print(f"  colour distance to the concept: before {result['distance_before']:.3f}, after "
          f"{result['distance_after']:.3f} (ratio {result['ratio']:.2f})")
    safe_print(f"  run folder: {run_dir}  (loss.csv, config.toml)")
    return 0
