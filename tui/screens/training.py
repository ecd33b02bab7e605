"""Training settings: every TrainConfig option (the ones not set on earlier screens), grouped into basic, preview and
advanced, validated as typed; a template picker showing prompts rendered from the real captions; with aspect-ratio
buckets on, how many images go to each bucket (recounted as the size fields change); TOML save/load.
Next starts the detached worker and opens the monitor."""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Select, Static, TabbedContent, TabPane

from core.errors import FieldError, TiwizError
from core.training.config import TrainConfig
from tui.state import WIZARD_DEFAULTS
from core.runs import api as runapi
from tui.bucket_scan import bucket_summary, read_sizes, settings_key
from tui.messages import BucketsCounted
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import ConfirmModal, PromptModal
from tui.training_text import (SET_EARLIER, form_warnings, loaded_message, sample_prompts, start_summary,
                               template_names)
from tui.widgets.inputs import OrderedInput, Tick

BASIC = ("steps", "lr", "batch_size", "grad_accum", "width", "height", "resize", "template", "save_every",
         "preview_every", "seed", "device")
PREVIEW_PREFIX = "preview_"
SDXL_HELP = {  # why the SDXL defaults differ, shown under the field when the model is SDXL
    "width": ". SDXL: 1024 (its native size); smaller trains faster but the embedding fits 1024 px images less well",
    "height": ". SDXL: 1024 (its native size)",
    "gradient_checkpointing": ". SDXL: auto leaves it off where 1024 px fits the GPU's free memory with a margin "
                              "(about twice as fast) and turns it on where it does not",
}
SIDE_TEXT_WIDTH = 32  # #tr-side's width less its border and padding
SIDE_DEBOUNCE_S = 0.15  # the summary and sample prompts wait for typing to pause this long


def groups() -> dict[str, list]:
    """The form's tabs: each TrainConfig field's spec (type, help, choices, bounds; see `core.fields`)."""
    out: dict[str, list] = {"Basic": [], "Preview": [], "Advanced": []}
    for f in TrainConfig.field_specs():
        if f.name in SET_EARLIER:
            continue
        if f.name in BASIC:
            out["Basic"].append(f)
        elif f.name.startswith(PREVIEW_PREFIX) and f.name != "preview_every":
            out["Preview"].append(f)
        else:
            out["Advanced"].append(f)
    out["Basic"].sort(key=lambda f: BASIC.index(f.name))
    return out


class TrainingScreen(WizardScreen):
    STAGE = "training"
    DEFAULT_CSS = """
    #tr-tabs { width: 1fr; }
    #tr-side { width: 34; padding-left: 1; border-left: solid $primary; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save_toml", "Save TOML", priority=True),
        Binding("ctrl+l", "load_toml", "Load TOML", priority=True),
        Binding("f6", "add_to_queue", "Queue", priority=True),  # not ctrl+b: tmux's prefix; short: the footer fits 80 columns
        Binding("alt+a", "add_to_queue", "Queue", show=False, priority=True),  # a browser keeps f6
        Binding("f2", "next_tab", "Tabs", priority=True),
        Binding("shift+f2", "next_tab(-1)", "Prev tab", show=False, priority=True),
    ]

    def on_resize(self, event) -> None:
        """Below 80 columns the side panel (sample prompts, run summary) goes, so the help text keeps a readable width
        instead of wrapping a few characters a line."""
        self.query_one("#tr-side").display = event.size.width >= 80

    def action_next_tab(self, direction: int = 1) -> None:
        """Basic → Preview → Advanced → Basic; the first field of the tab gets the focus."""
        tabs = self.query_one("#tr-tabs", TabbedContent)
        panes = [pane.id for pane in self.query(TabPane)]
        at = panes.index(tabs.active) if tabs.active in panes else 0
        tabs.active = panes[(at + direction) % len(panes)]
        field = next(iter(self.query_one(f"#{tabs.active}", TabPane).query(".form-field")), None)
        if field is not None:
            self.set_focus(field)

    def compose_body(self) -> ComposeResult:
        defaults = TrainConfig()
        templates = template_names()
        with Horizontal(classes="body"):
            with TabbedContent(id="tr-tabs"):
                for group, group_fields in groups().items():
                    with TabPane(group, id=f"tab-{group.lower()}"):
                        with VerticalScroll():
                            for f in group_fields:
                                yield from self._field(f, defaults, templates)
            with Vertical(id="tr-side"):
                yield Label("Sample prompts", classes="section")
                yield Static("", id="tr-samples")
                yield Label("Run", classes="section")
                yield Static("", id="tr-summary")
                yield Static("", id="tr-bucket-summary", markup=False)

    def _field(self, f, defaults: TrainConfig, templates: list[str]):
        value = self.state.train.get(f.name, WIZARD_DEFAULTS.get(f.name, getattr(defaults, f.name)))
        with Horizontal(classes="form-row"):
            yield Label(f.label, classes="form-label")
            if f.type is bool:
                yield Tick("", bool(value), id=f"tr-{f.name}", classes="form-field", compact=True)
            elif f.choices:
                yield Select([(c, c) for c in f.choices], value=value, allow_blank=False,
                             id=f"tr-{f.name}", classes="form-field", compact=True)
            elif f.name == "template" and templates:
                options = [(t, t) for t in templates]
                if value not in templates:
                    options.append((str(value), str(value)))
                yield Select(options, value=value, allow_blank=False, id=f"tr-{f.name}", classes="form-field", compact=True)
            else:
                # numbers are typed as text and validated as a whole: a wrong character stays visible, marked, and
                # the message names the field (a typed restriction would drop it: "0.01" became "001")
                yield OrderedInput(str(value), id=f"tr-{f.name}", classes="form-field", compact=True, name=f.label)
        yield Static(f.help + (SDXL_HELP.get(f.name, "") if getattr(self.state, "model_family", "") == "sdxl" else ""),
                     classes="form-help", markup=False)

    def on_mount(self) -> None:
        self.query_one("#tr-steps").focus()
        self.query_one("#tr-bucket-summary").display = False  # shown when buckets are on
        self._after_change()

    # --- editing -----------------------------------------------------------------------------------------------

    def _store(self, name: str, value) -> None:
        self.state.train[name] = value
        self._after_change()

    @on(Input.Changed)
    def _input(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("tr-"):
            self._store(event.input.id[3:], event.value.strip())

    @on(Checkbox.Changed)
    def _checkbox(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id and event.checkbox.id.startswith("tr-"):
            self._store(event.checkbox.id[3:], event.value)

    @on(Select.Changed)
    def _select(self, event: Select.Changed) -> None:
        if event.select.id and event.select.id.startswith("tr-") and event.value != Select.NULL:
            self._store(event.select.id[3:], event.value)

    def build_config(self, require_paths: bool = True) -> TrainConfig:
        config = TrainConfig.from_dict(self.state.train_config(), validate=False)
        return config.validate(require_paths=require_paths)

    def _after_change(self) -> None:
        for widget in self.query(".form-field"):
            widget.remove_class("-invalid")
        problem = None
        try:
            config = self.build_config(require_paths=False)
        except FieldError as exc:  # the field comes with the error: mark its input
            config, problem = None, error_text(exc)
            for widget in self.query(f"#tr-{exc.field}"):
                widget.add_class("-invalid")
        except Exception as exc:
            config, problem = None, error_text(exc)
        warnings = form_warnings(config, self.state.name) if config is not None else []
        self.show_message(problem or " ".join(warnings), "error" if problem else "warning")
        self._update_side(config)
        self._update_buckets(config)

    def _update_side(self, config: TrainConfig | None) -> None:
        if config is not None:
            self.render_side(config)

    @work(thread=True, exclusive=True, group="samples", exit_on_error=False)
    def render_side(self, config: TrainConfig) -> tuple | None:
        """The summary and the sample prompts read the dataset folder: off the UI thread, once typing pauses."""
        from textual.worker import get_current_worker

        time.sleep(SIDE_DEBOUNCE_S)
        if get_current_worker().is_cancelled:
            return None
        images = 0
        try:
            from core.prep.captions import list_images

            images = len(list_images(config.data))
        except Exception:
            pass
        try:
            lines = sample_prompts(config.template, self.state.name, self.state.dataset,
                                   shuffle_tags=config.shuffle_tags, tag_dropout=config.tag_dropout)
            text = "\n".join(f"• {line}" for line in lines)
        except Exception as exc:
            text = f"[red]{error_text(exc)}[/]"
        return config, images, text  # a cancelled worker's result never arrives

    def render_side_done(self, side: tuple | None) -> None:
        if side is None:
            return
        config, images, samples = side
        self.query_one("#tr-samples", Static).update(samples)
        per_step = config.batch_size * config.grad_accum
        epochs = config.steps * per_step / images if images else 0
        self.query_one("#tr-summary", Static).update(
            f"{config.steps} steps × {per_step} image{'s' if per_step != 1 else ''} "
            f"≈ {epochs:.1f} epochs of {images} images\n"
            f"{config.width}×{config.height}, lr {config.lr}\n"
            f"saves every {config.save_every or 'end'}, previews every {config.preview_every or 'never'}"
        )

    # --- buckets -----------------------------------------------------------------------------------------------

    _bucket_key: tuple | None = None  # the settings the bucket line is (being) counted for; None: nothing pending

    def _update_buckets(self, config: TrainConfig | None) -> None:
        """With buckets on, the dataset's images per bucket, recounted in a worker when a size setting changes."""
        line = self.query_one("#tr-bucket-summary", Static)
        if config is None or not config.buckets:
            self._bucket_key = None  # a count still under way for earlier settings is dropped when it arrives
            self.workers.cancel_group(self, "buckets")
            if config is None and line.display:
                line.update("buckets: waiting for valid settings")
            else:
                line.display = False
            return
        line.display = True
        key = settings_key(config)
        if key != self._bucket_key:
            self._bucket_key = key
            line.update("buckets: counting…")
            self.count_buckets(config, key)

    @work(thread=True, exclusive=True, group="buckets", exit_on_error=False)
    def count_buckets(self, config: TrainConfig, key: tuple) -> None:
        """Once typing pauses: every image's size from its header (cached), grouped as the trainer will."""
        from textual.worker import get_current_worker

        from core.prep.captions import list_images

        worker = get_current_worker()
        time.sleep(SIDE_DEBOUNCE_S)
        if worker.is_cancelled:
            return
        try:
            sizes = read_sizes(list_images(config.data), lambda: worker.is_cancelled)
        except Exception as exc:
            self.post_message(BucketsCounted(key, f"buckets: {error_text(exc)}"))
            return
        if sizes is not None and not worker.is_cancelled:
            self.post_message(BucketsCounted(key, bucket_summary(config, sizes, width=SIDE_TEXT_WIDTH)))

    def on_buckets_counted(self, message: BucketsCounted) -> None:
        if message.key == self._bucket_key:
            self.query_one("#tr-bucket-summary", Static).update(message.text)

    # --- TOML --------------------------------------------------------------------------------------------------

    def _default_toml(self) -> str:
        return str(Path(self.state.dataset or ".").expanduser().parent / f"{self.state.name or 'tiwiz'}.toml")

    def action_save_toml(self) -> None:
        def answered(path: str | None) -> None:
            if path:
                self.save_toml(path)

        self.app.push_screen(PromptModal("Save the training config as TOML:", self._default_toml()), answered)

    @work(thread=True, exclusive=True, group="toml", exit_on_error=False)
    def save_toml(self, path: str) -> str:
        return f"Saved {self.build_config().to_toml(Path(path).expanduser())}"

    def save_toml_done(self, text: str) -> None:
        self.show_message(text, "ok")

    def action_load_toml(self) -> None:
        def answered(path: str | None) -> None:
            if path:
                self.load_toml(path)

        self.app.push_screen(PromptModal("Load a training config (TOML):", self._default_toml()), answered)

    @work(thread=True, exclusive=True, group="toml", exit_on_error=False)
    def load_toml(self, path: str) -> tuple[str, TrainConfig]:
        return path, TrainConfig.from_toml(Path(path).expanduser(), validate=False)

    def load_toml_done(self, loaded: tuple[str, TrainConfig]) -> None:
        path, config = loaded
        data = config.to_dict()
        defaults = TrainConfig().to_dict()
        self.state.train = {k: v for k, v in data.items() if k not in SET_EARLIER and v != defaults.get(k)}
        text = " ".join([loaded_message(path, data, self.state.train_config()),
                         *form_warnings(config, self.state.name)])
        self.app.goto("training")  # rebuild the form from the loaded values
        self.app.call_after_refresh(lambda: self.app.screen.show_message(text, "warning" if "⚠" in text else "info"))

    # --- start -------------------------------------------------------------------------------------------------

    def check(self) -> str | None:
        try:
            self.build_config(require_paths=False)
        except Exception as exc:  # noqa: BLE001 - said; Next stays here
            return error_text(exc)
        return None

    _summary = ""  # what ctrl+n is about to start, written by check_files
    _checked: TrainConfig | None = None  # the config check_files validated (paths included): what starts or is queued

    def check_files(self) -> str | None:
        """The preflight (the dataset's images, the tokenizer, the model's files), found now rather than after the
        worker has loaded the model (the CUDA check is in start_training); then the run's summary."""
        from core.training import preflight

        try:
            config = self.build_config()
        except Exception as exc:  # noqa: BLE001 - said; Next stays here
            return error_text(exc)
        found = preflight.problems(config, cuda=lambda: None)
        if found:
            return found[0]
        self._summary = start_summary(config, self.app.runs_root)
        self._checked = config
        return None

    def proceed(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.show_message("Starting the training worker…", "info")
                self.start_training()

        self.app.push_screen(ConfirmModal("Start training?", self._summary), answered)

    def action_add_to_queue(self) -> None:
        """Beside "start now" (ctrl+n): add this embedding to the run queue (`tiwiz queue`), to train with the rest."""
        self.show_message("Adding to the queue…", "info")
        self.add_to_queue()

    @work(thread=True, exclusive=True, group="queue", exit_on_error=False)
    def add_to_queue(self) -> str:
        from core.queue.jobs import add_jobs, default_queue_dir

        problem = self.check() or self.check_files()
        if problem:
            raise TiwizError(problem)
        (job,) = add_jobs(default_queue_dir(self.app.runs_root), [(None, self._checked.to_dict(), "job")])
        return (f"Added job {job.name} to the queue ({job.config_path}). `tiwiz queue run` trains the queue; the "
                "start screen lists it.")

    def add_to_queue_done(self, text: str) -> None:
        self.show_message(text, "ok")

    @work(thread=True, exclusive=True, group="start", exit_on_error=False)
    def start_training(self) -> Path:
        from core.training import preflight

        config = self._checked  # validated by Next's checks a moment ago: not rebuilt from the form's text again
        found = preflight.device_problems(config, cuda=preflight.cuda_available_in_subprocess)
        if found:
            raise TiwizError(found[0])
        return Path(runapi.start_run(config, root=self.app.runs_root))

    def start_training_done(self, run_dir: Path) -> None:
        self.state.run_dir = str(run_dir)
        self.app.goto("monitor")
