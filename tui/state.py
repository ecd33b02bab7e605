"""The one wizard-state object. Every screen reads its fields from it and writes edits back at once, so Back never
loses input; it is saved as JSON (atomically) after each change of stage so a restarted `tiwiz` offers to continue."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from core.atomic import atomic_write_json

STAGES = ("start", "model", "folders", "preprocess", "captions", "embedding", "training", "monitor", "finish")
STAGE_TITLES = {
    "start": "Start",
    "model": "Base model",
    "folders": "Folders",
    "preprocess": "Preprocess",
    "captions": "Captions",
    "embedding": "Embedding",
    "training": "Training settings",
    "monitor": "Training",
    "finish": "Finished",
}
# The stages a user walks through with Next/Back (start and monitor are entered, not stepped into).
WIZARD_STAGES = STAGES[STAGES.index("model"):STAGES.index("monitor")]
# Next/Back move along STAGES up to the monitor; the monitor itself opens the finish screen.
_STEPPED = STAGES[:STAGES.index("monitor") + 1]


def neighbour_stage(current: str, direction: int, *, skip_preprocess: bool = False) -> str:
    """The stage Next (+1) or Back (-1) leads to from `current`; preprocessing is stepped over when skipped, and an
    unknown stage leads to the start."""
    if current not in _STEPPED:
        return "start"
    i = min(max(_STEPPED.index(current) + direction, 0), len(_STEPPED) - 1)
    if _STEPPED[i] == "preprocess" and skip_preprocess:
        i += direction
    return _STEPPED[i]


def tiwiz_home() -> Path:
    """`$TIWIZ_HOME`, else `~/.config/tiwiz`."""
    env = os.environ.get("TIWIZ_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tiwiz"


def default_state_path() -> Path:
    return tiwiz_home() / "wizard.json"


# Where the wizard's defaults differ from TrainConfig's (the CLI's). auto_stop: in the CLI `steps` means what it says
# (A1111 parity); in the wizard the default 3000 steps is a ceiling and the run ends when the validation loss is flat
# (on the world model the rule ended runs at 270 of 400 steps with the final quality of a 300-step run;
# bench/RESULTS.md, "Time to a good embedding").
WIZARD_DEFAULTS = {"auto_stop": True}


@dataclass
class WizardState:
    stage: str = "start"
    demo: bool = False
    model: str = ""
    model_family: str = ""  # "sd1" | "sd2" | "sdxl", from the model's header when the model screen accepts it
    text_widths: list = field(default_factory=list)  # each text encoder's width (SDXL: CLIP-L, bigG); [] = unknown
    source: str = ""
    dataset: str = ""  # the preprocessed (training) folder: the preprocess destination
    skip_preprocess: bool = False
    preprocess: dict = field(default_factory=dict)  # PreprocessOptions field -> value (only what the user set)
    name: str = ""
    init_text: str = "*"
    vectors: int = 1
    overwrite: bool = False
    train: dict = field(default_factory=dict)  # TrainConfig field -> value (only what the user set)
    run_dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "WizardState":
        """Build from saved JSON; unknown keys (from another version) are dropped, wrong types fall back to defaults."""
        state = cls()
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            default = getattr(state, f.name)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, type(default))
            if ok:
                setattr(state, f.name, value)
        if state.stage not in STAGES:
            state.stage = "start"
        return state

    def train_config(self) -> dict:
        """The TrainConfig fields this wizard state sets (the user's settings plus the earlier stages), over the
        wizard's own defaults (WIZARD_DEFAULTS)."""
        cfg = {**WIZARD_DEFAULTS, **self.train}
        cfg.update(
            model=self.model,
            data=self.dataset,
            name=self.name,
            init_text=self.init_text,
            vectors=int(self.vectors),
            overwrite=bool(self.overwrite),
        )
        return cfg

    def has_progress(self) -> bool:
        """Whether there is anything worth offering to continue."""
        return self.stage not in ("start",) and bool(self.model or self.source or self.dataset or self.name)


def train_again_state(config: dict, model_family: str = "") -> "WizardState":
    """The wizard state for training again from a finished run's config (its config.toml as a dict): every stage
    filled in from it, at Training settings, so one change and Next start a new run (never over the old one)."""
    from core.training.config import TrainConfig

    earlier = ("model", "data", "name", "init_text", "vectors", "overwrite", "output")
    defaults = TrainConfig().to_dict()
    state = WizardState(stage="training", model=str(config.get("model", "")), model_family=model_family,
                        source=str(config.get("data", "")), dataset=str(config.get("data", "")), skip_preprocess=True,
                        name=str(config.get("name", "")), init_text=str(config.get("init_text", "*")),
                        vectors=int(config.get("vectors", 1)))
    state.train = {k: v for k, v in config.items() if k not in earlier and k in defaults and v != defaults[k]}
    for key, value in WIZARD_DEFAULTS.items():
        state.train.setdefault(key, defaults.get(key, value))  # the run's own value, not the wizard's default
    return state


def load_state(path: str | os.PathLike | None = None) -> WizardState | None:
    """The saved state, or None when there is none or it cannot be read (a broken file never stops the app)."""
    path = Path(path) if path else default_state_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return WizardState.from_dict(data)


def save_state(state: WizardState, path: str | os.PathLike | None = None) -> Path:
    path = Path(path) if path else default_state_path()
    return atomic_write_json(path, state.to_dict())
