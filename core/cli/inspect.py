"""`tiwiz inspect FILE [FILE2] [--model M]`: an embedding's vectors, their norms against the vocabulary's, nearest
vocabulary tokens, and the cosine between two embeddings. `tiwiz inspect --run RUN`: the same for a run's embedding
(with the run's model), plus the run's norm mode, its editability along the validations (loss.csv) and the images
that fight the concept (image_ranking.json). torch is imported only inside the handler."""

from __future__ import annotations

import argparse
import json
import sys

from core.safe_text import safe_print

EPILOG = """examples:
  tiwiz inspect runs/cat/zxq-cat.safetensors --model ./sd15
  tiwiz inspect zxq-cat.pt runs/cat/embeddings/zxq-cat-500.safetensors     # cosine between the two
  tiwiz inspect zxq-cat.pt --model ./sd15 --json
  tiwiz inspect --run runs/zxq-cat-20260101-120000                        # a run: its embedding, editability
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="show an embedding's vectors, norms and nearest tokens", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show what an embedding file holds: each vector's norm (and, with --model, where it lies in the "
                    "vocabulary's norm distribution and its nearest vocabulary tokens by cosine). A norm far above "
                    "the vocabulary's swamps the rest of the prompt. Given a second file, also the cosine between "
                    "the two. Reads A1111 .pt/.png, diffusers, kohya, OneTrainer and bare-tensor files.")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="an embedding file (.safetensors, .pt, .bin or an A1111 .png)")
    p.add_argument("other", metavar="FILE2", nargs="?", help="a second embedding to compare with (cosine)")
    p.add_argument("--model", metavar="M", help="the base model (diffusers folder or .safetensors/.ckpt) whose "
                   "vocabulary to compare with")
    p.add_argument("--run", metavar="RUN", help="a run folder (or its name under the runs folder) instead of FILE: "
                   "its final embedding (else its latest checkpoint) with its model, its norm mode, the editability "
                   "signal at each validation (1.0: the context words read as next to the init text) and the "
                   "images that fight the concept, where `tiwiz doctor --run` or the run's end ranked them")
    p.add_argument("--top", type=int, default=5, metavar="K", help="nearest tokens per vector (default 5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.embeddings.inspect import format_report, inspect_file
    from core.errors import TiwizError

    if args.top < 1:
        raise TiwizError(f"--top: must be >= 1 (got {args.top})")
    if bool(args.file) == bool(args.run):
        raise TiwizError("give an embedding FILE or --run RUN (one of them)")
    if args.run:
        report = run_report(args.run, model=args.model, other=args.other, k=args.top)
    else:
        report = inspect_file(args.file, model=args.model, other=args.other, k=args.top)
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
    else:
        text = format_report(report)
        if "run" in report:
            text = "\n".join(format_run(report["run"])) + "\n" + text
        safe_print(_safe(text))
    return 0


def run_report(run: str, model: str | None = None, other: str | None = None, k: int = 5) -> dict:
    """`inspect_file` of a run's embedding (the final one, else the latest checkpoint) with the run's model (when it
    is still there), and under "run": its norm mode, its editability at each validation and its ranked images."""
    from pathlib import Path

    from core.embeddings.inspect import inspect_file
    from core.errors import TiwizError
    from core.runs import folder
    from core.runs.lossfile import read_loss_csv
    from core.runs.run_state import RunState
    from core.training.config import TrainConfig
    from core.embeddings.vectors import sanitize_name
    from core.training.image_ranking import read_ranking, run_embedding_file

    run_dir = folder.resolve_run(run)
    config = TrainConfig.from_toml(run_dir / "config.toml", validate=False)
    state = RunState.fold(folder.read_events(run_dir)[0])
    final = run_dir / state.final_safetensors if state.final_safetensors else None
    embedding = final if final and final.is_file() else run_embedding_file(run_dir, sanitize_name(config.name))
    if embedding is None:
        raise TiwizError(f"{run_dir}: no embedding saved yet (no final file, no checkpoint)")
    model = model or (config.model if config.model and Path(config.model).exists() else None)
    report = inspect_file(embedding, model=model, other=other, k=k)
    try:
        rows = read_loss_csv(run_dir / "loss.csv")
    except (OSError, UnicodeDecodeError):
        rows = []
    try:
        ranking = read_ranking(run_dir)
    except ValueError as exc:
        ranking, problem = None, str(exc)
    else:
        problem = ""
    report["run"] = {
        "folder": str(run_dir), "state": folder.inspect_run(run_dir).description, "model": model or "",
        "norm_mode": config.norm_mode, "norm_clamp_k": config.norm_clamp_k, "best_step": state.best_step,
        "editability": [[r["step"], r["editability"]] for r in rows if r.get("editability") is not None],
        "flagged_images": [[im.image, im.message] for im in ranking.flagged] if ranking else None,
        "image_ranking_problem": problem}
    return report


def format_run(run: dict) -> list[str]:
    """The run part of `tiwiz inspect --run` in words."""
    mode = run["norm_mode"] + (f" (k {run['norm_clamp_k']:g})" if run["norm_mode"] == "clamp" else "")
    lines = [f"run {run['folder']}: {run['state']}; norm mode {mode}"]
    if not run["model"]:
        lines.append("  (the run's model is not here: no vocabulary comparison; give --model)")
    series = run["editability"]
    if series:
        picks = {series[0][0], series[-1][0]} | ({run["best_step"]} if run["best_step"] is not None else set())
        shown = [f"step {s} {v:.3f}" + (" (best step)" if s == run["best_step"] else "")
                 for s, v in series if s in picks]
        low = min(series, key=lambda sv: sv[1])
        lines.append(f"  editability (the context words next to the embedding against next to the init text; 1 = "
                     f"the same): {', '.join(shown)}; lowest {low[1]:.3f} at step {low[0]}")
    else:
        lines.append("  editability: not measured (no validation in this run, or a run from before it)")
    flagged = run["flagged_images"]
    if run["image_ranking_problem"]:
        lines.append(f"  images: {run['image_ranking_problem']}")
    elif flagged is None:
        lines.append("  images that fight the concept: not ranked yet (`tiwiz doctor --run RUN`)")
    elif not flagged:
        lines.append("  images that fight the concept: none stands out")
    else:
        lines.append("  images that fight the concept:")
        lines.extend(f"    {image}: {message}" for image, message in flagged)
    return lines


def _safe(text: str) -> str:
    """File names and stored names are user-controlled: no terminal control characters."""
    try:
        from core.safe_text import safe_text  # hardening's helper, where present
    except ImportError:
        return "".join(ch if ch == "\n" or ch.isprintable() else "?" for ch in text)
    return "\n".join(safe_text(line) for line in text.split("\n"))
