"""Checkpoints: the embedding files of a step (embeddings/NAME-STEP.pt/.safetensors; SDXL: .safetensors only), the
final NAME.pt/.safetensors, and state/latest.pt, from which `restore` continues a run bit for bit.

A checkpoint is written at most once per step, always with state/latest.pt beside it, and its `checkpoint` event
carries the vector report (core.training.reports). The files hold the vectors a run saves (the average, with
ema_decay); the state holds the raw vectors the optimizer steps, the average, and every RNG the run draws from.
"""

from __future__ import annotations

from pathlib import Path

from core.diskspace import disk_full_message, is_disk_full
from core.embeddings.vectors import save_embedding, save_sdxl_embedding
from core.errors import TiwizError
from core.runs import run_events as ev
from core.training import guard
from core.training.conditioning import split_vectors
from core.training.resume_state import (capture_global_rng, load_state, py_state, py_state_from, restore_global_rng,
                                        save_state)

STATE = "state/latest.pt"


def save(s, final: bool = False) -> tuple[str, str]:
    """Checkpoint session `s` at s.step (embeddings/NAME-STEP.* and state/latest.pt, once per step); with final=True
    also NAME.*. Returns the (.pt, .safetensors) written last, relative to the run folder ("" for no .pt)."""
    try:
        return _write(s, final)
    except OSError as exc:
        raise TiwizError(f"could not save at step {s.step}: {exc.strerror or exc} ({exc.filename or s.out_dir}); "
                         "earlier checkpoints are intact") from exc


def _write(s, final: bool) -> tuple[str, str]:
    if s.last_saved_step != s.step:
        pt, st = save_embedding_files(s, f"embeddings/{s.name}-{s.step}")
        s.watch.checkpointed(s.step)
        _save_state(s)
        s.last_saved_step = s.step
        guard.checkpointed(s)  # where a divergence rolls back to
        report = s.reports.report(s)
        best_step, _, best_basis = s.watch.best(s.out_dir, s.name)
        s.sink.emit(ev.Checkpoint(step=s.step, pt=pt, safetensors=st, norms=report["norms"],
                                  nearest=report["nearest"], vocab_median_norm=report["vocab_median_norm"],
                                  best=s.watch.is_new_best_at(s.step), best_step=best_step, best_basis=best_basis))
        for message in s.reports.new_warnings(report):
            s.sink.emit(ev.Warning(step=s.step, message=message))
    if final:
        return save_embedding_files(s, s.name)
    pt = "" if s.model.family == "sdxl" else f"embeddings/{s.name}-{s.step}.pt"
    return pt, f"embeddings/{s.name}-{s.step}.safetensors"


def save_embedding_files(s, rel_stem: str) -> tuple[str, str]:
    """The saved vectors as `rel_stem`.pt and .safetensors (SDXL: `clip_l` and `clip_g` in the .safetensors only)."""
    vectors = s.saved_vectors().float().cpu()
    fields = dict(name=s.name, step=s.step, base_model=s.model.name, base_hash=s.model.short_hash,
                  init_text=s.config.init_text, overwrite=True)
    stem = s.out_dir / rel_stem
    if s.model.family == "sdxl":
        parts = split_vectors(vectors, s.slots)
        pt, st = None, save_sdxl_embedding(parts["clip_l"], parts["clip_g"], stem, **fields)
    else:
        pt, st = save_embedding(vectors, stem, **fields)
    return ("" if pt is None else str(Path(pt).relative_to(s.out_dir))), str(Path(st).relative_to(s.out_dir))


def _save_state(s) -> None:
    feed = s.feed
    save_state(s.out_dir / STATE, {
        "name": s.name,
        "step": s.step,
        "epoch": feed.epoch,
        "elapsed_s": s.elapsed(),
        "vectors": s.vectors.detach().float().cpu().clone(),
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None,
        "generator": s.generator.get_state(),
        "data_rng": py_state(feed.rng),
        "batches": [list(b) for b in feed.batches],
        "batch_pos": feed.pos,
        "lr_scale": s.lr_scale,
        "data_fingerprint": s.data_fingerprint,
        **s.watch.state_dict(),  # autostop, best_holdout, best_val_checkpoint
        "ema": s.ema.state_dict() if s.ema is not None else None,
        "norms": s.norms.state_dict(),
        "global_rng": capture_global_rng(),
        "loss_rows_until_step": s.step,
    })


def restore(s, state: dict) -> None:
    """Continue session `s` from a state/latest.pt (`resume_state.load_state`): the inverse of `_save_state`."""
    feed = s.feed
    s.step, feed.epoch = int(state["step"]), int(state["epoch"])
    s.elapsed_before = float(state["elapsed_s"])
    s.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    s.generator.set_state(state["generator"])
    feed.rng.setstate(py_state_from(state["data_rng"]))
    feed.batches = [list(b) for b in state["batches"]]
    feed.pos = int(state["batch_pos"])
    s.lr_scale = float(state.get("lr_scale", 1.0))
    if s.ema is not None:
        s.ema.load_state_dict(state.get("ema"))  # none in a state from before ema_decay: it starts here
    s.watch.load_state_dict(state, s.out_dir, s.name, s.step)
    s.norms.load_state_dict(state.get("norms"), s.vectors)  # preserve's targets (a state without: the norms now)
    s.last_saved_step = s.step
    restore_global_rng(state["global_rng"])


def disk_full_error(exc: BaseException, out_dir: Path, step: int, last_saved_step: int) -> TiwizError | None:
    """A full disk in words (torch says `iostream error`), with the free space and the checkpoint to go back to."""
    if not isinstance(exc, Exception) or not is_disk_full(exc, out_dir):
        return None
    if last_saved_step <= 0:  # a resumed run failing in setup has not read its state into a session yet
        last_saved_step = _state_step(out_dir)
        step = max(step, last_saved_step)
    if last_saved_step > 0 and (out_dir / STATE).is_file():
        hint = (f"The last good checkpoint is step {last_saved_step}; free space and `tiwiz resume {out_dir}` "
                "continues from it.")
    else:
        hint = f"No checkpoint was saved yet; free space and `tiwiz resume {out_dir}` starts it again from step 0."
    return TiwizError(f"{disk_full_message(out_dir, f'write the files of step {step}')}. {hint}")


def _state_step(out_dir: Path) -> int:
    """The step of the run folder's resume state (0 without a readable one)."""
    try:
        return int(load_state(out_dir / STATE)["step"])
    except Exception:  # noqa: BLE001 - no state, or a damaged one: nothing to resume from
        return 0
