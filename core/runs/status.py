"""`status.json`: the typed snapshot of a run that `tiwiz runs`, the queue and scripts read without replaying the
event log. The worker folds its events with the one reducer (`core.runs.run_state.RunState`) and writes this record
from that state (`RunStatus.from_state`), plus who it is (pid, host) and when; `core.runs.listing.RunInfo` is this
record plus liveness. The same rules as the events (`core.runs.contract`): fields whose value is None are left out;
reading ignores unknown fields and accepts the older names (`error` for `reason`, old state words), and a field of
the wrong type is dropped (its default used) and reported, never raised. Torch-free and Textual-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.runs.contract import Bad, describe_fields, help_field as _help, parser, record_json
from core.runs.vocab import RunPhase

_FIELD_ALIASES = {"error": "reason", "phase": "state"}  # older status.json files


@dataclass(kw_only=True)
class RunStatus:
    """The run's state, progress and outcome in one JSON object, rewritten atomically (at once on a change of state
    or a checkpoint, at most once a second for plain steps)."""

    state: RunPhase = _help("where the run is (see Phases); a reader checks an active state against the worker lock",
                            RunPhase.UNKNOWN)
    pid: int | None = _help("the worker's process id (null while it is being spawned)", None)
    host: str | None = _help("the machine the worker runs on (a pid means nothing on another one)", None)
    name: str = _help("the embedding's name (its trigger word)", "")
    step: int = _help("the last step done", 0)
    max_steps: int = _help("the step training ends at", 0)
    last_checkpoint: int | None = _help("the step of the newest checkpoint (what a resume continues from)", None)
    last_loss: float | None = _help("the newest step's training loss", None)
    reason: str = _help("why it stopped, failed or finished early, in words ('' otherwise)", "")
    best_step: int | None = _help("the suggested best step (as in the `validation` event)", None)
    best_checkpoint: str | None = _help("the .safetensors checkpoint of best_step, relative to the run folder", None)
    best_basis: str | None = _help("what best_step rests on: holdout, flat or validation", None)
    compile: str | None = _help("how the step runs: eager, cuda_graph or compile (from the `compile` event)", None)
    gradient_checkpointing: bool | None = _help("whether activations are recomputed (the `memory_plan` event)",
                                                None)
    resumed: bool = _help("true when this life continues an earlier one", False)
    foreground: bool | None = _help("true for `tiwiz train --foreground` (no worker process: the CLI holds the "
                                    "lock)", None)
    started: float | None = _help("unix time this life of the worker started", None)
    updated: float | None = _help("unix time of this snapshot", None)

    def to_json(self) -> dict:
        return record_json(self)

    @classmethod
    def parse(cls, data: dict) -> tuple["RunStatus", list[str]]:
        """The record of a status.json object and the problems met (fields of the wrong type, dropped). Never
        raises for a dict."""
        data = dict(data)
        for old, new in _FIELD_ALIASES.items():
            value = data.pop(old, None)
            if value and not data.get(new):
                data[new] = value
        problems = []
        read = parser(cls)
        for _ in range(len(data) + 1):
            try:
                return read(data), problems
            except Bad as bad:
                problems.append(f"{bad}; ignored")
                data = {k: v for k, v in data.items() if k != bad.field}
        return cls(), problems

    @classmethod
    def from_state(cls, run, **meta: Any) -> "RunStatus":
        """The status of a folded `RunState` (`run`), with `meta`: pid, host, started, resumed, foreground."""
        return cls(state=run.phase, name=run.name, step=run.step, max_steps=run.max_steps,
                   last_checkpoint=run.last_checkpoint, last_loss=run.last_loss, reason=run.reason,
                   best_step=run.best_step, best_checkpoint=run.best_checkpoint or None, best_basis=run.best_basis,
                   compile=run.compile_mode or None, gradient_checkpointing=run.gradient_checkpointing, **meta)


def describe_status_fields() -> list[dict]:
    """The fields of status.json, for the generated run-folder reference."""
    return describe_fields(RunStatus)
