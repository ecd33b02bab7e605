"""Preprocess options: a form built from `core.prep.options` (every option, its default and one-line help), with
the captioner chosen first (none, BLIP sentences, or tagger tags: only the chosen one's options and thresholds are
shown), then `tiwiz preprocess SRC DEST --jsonl` in a subprocess with a progress bar and the skipped files and
warnings with reasons."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, RichLog, Select, Static

from core.prep.captions import list_images
from tui.jobs import run_jsonl
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import ConfirmModal
from tui.widgets.inputs import OrderedInput


CAPTIONERS = (("No captions", "none"), ("BLIP: sentences", "blip"), ("Tagger: booru tags", "tagger"))


def option_fields() -> list[dict]:
    from core.prep.options import option_fields as fields

    return fields()


def tail(path: str, width: int = 24) -> str:
    """The end of a long path: `…/shoot/photos`."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


def captioner_of(values: dict) -> str:
    """"blip", "tagger" or "none": which captioner the form's values name."""
    if str(values.get("blip") or "").strip():
        return "blip"
    return "tagger" if str(values.get("tagger") or "").strip() else "none"


def cli_args(values: dict) -> list[str]:
    """The `tiwiz preprocess` flags for the values that differ from the defaults."""
    args: list[str] = []
    for f in option_fields():
        value = values.get(f["name"], f["default"])
        if value == f["default"]:
            continue
        flag = f.get("cli") or "--" + f["name"].replace("_", "-")
        if isinstance(f["default"], bool):
            args.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            args.extend([flag, str(value)])
    return args


class PreprocessScreen(WizardScreen):
    STAGE = "preprocess"
    DEFAULT_CSS = """
    #pp-form { width: 1fr; }
    #pp-side { width: 40%; min-width: 24; max-width: 40; padding-left: 1; border-left: solid $primary; }
    #pp-skipped { height: 1fr; }
    #pp-summary { text-wrap: nowrap; text-overflow: ellipsis; }
    #pp-progress { width: 100%; }
    #pp-progress Bar { width: 1fr; }
    .pp-field { height: auto; }
    """
    BINDINGS = [Binding("ctrl+r", "run", "Run", priority=True)]

    def compose_body(self) -> ComposeResult:
        values = self.state.preprocess
        with Horizontal(classes="body"):
            with VerticalScroll(id="pp-form"):
                chooser = True
                for f in option_fields():
                    if f["name"] in ("blip", "tagger") and chooser:
                        chooser = False
                        with Horizontal(classes="form-row"):
                            yield Label("captions", classes="form-label")
                            yield Select(CAPTIONERS, value=captioner_of(values), allow_blank=False,
                                         id="pp-captioner", classes="form-field", compact=True)
                        yield Static("Captions for the written images: sentences (BLIP), booru tags (a WD14 "
                                     "tagger, for anime models), or none.", classes="form-help", markup=False)
                    with Vertical(classes=f"pp-field group-{f.get('group', 'all')}"):
                        yield from self._field(f, values.get(f["name"], f["default"]))
            with Vertical(id="pp-side"):
                yield Static(self._summary(), id="pp-summary")
                yield Button("Run (ctrl+r)", id="pp-run", variant="primary")
                yield ProgressBar(total=None, show_eta=False, id="pp-progress")
                yield Static("", id="pp-status")
                yield Label("Skipped, warnings", classes="section")
                yield RichLog(id="pp-skipped", max_lines=500, wrap=True, markup=False, min_width=20)  # wrap, never cut

    def _field(self, f: dict, value) -> ComposeResult:
        name, default = f["name"], f["default"]
        with Horizontal(classes="form-row"):
            yield Label(name.replace("_", " "), classes="form-label")
            if isinstance(default, bool):
                yield Checkbox("", bool(value), id=f"pp-{name}", classes="form-field", compact=True)
            elif f.get("choices"):
                yield Select([(c, c) for c in f["choices"]], value=value, allow_blank=False,
                             id=f"pp-{name}", classes="form-field", compact=True)
            else:
                kind = {"int": "integer", "float": "number"}.get(f["type"], "text")
                yield OrderedInput(str(value), type=kind, id=f"pp-{name}", classes="form-field", compact=True)
        yield Static(f.get("help", ""), classes="form-help", markup=False)

    def _summary(self) -> str:
        # one line each, the end of the path kept (the Folders screen shows them whole): the list below stays in view
        return f"From  {tail(self.state.source)}\nInto  {tail(self.state.dataset)}"

    def on_mount(self) -> None:
        self.query_one("#pp-progress", ProgressBar).display = False
        self._show_captioner(captioner_of(self.state.preprocess))
        self.query_one(".form-field").focus()

    def _show_captioner(self, captioner: str) -> None:
        """Show the chosen captioner's options (the tagger's thresholds, BLIP's batch size) and hide the other's."""
        for group in ("blip", "tagger"):
            for row in self.query(f".group-{group}"):
                row.display = group == captioner

    @on(Select.Changed, "#pp-captioner")
    def _captioner(self, event: Select.Changed) -> None:
        """Choosing a captioner fills in its usual model (editable) and clears the other one's."""
        event.stop()
        chosen = str(event.value)
        suggest = {f["name"]: f.get("suggest", "") for f in option_fields()}
        for name in ("blip", "tagger"):
            field = self.query_one(f"#pp-{name}", Input)
            value = (field.value.strip() or suggest[name]) if name == chosen else ""
            self.state.preprocess[name] = value
            with field.prevent(Input.Changed):
                field.value = value
        self._show_captioner(chosen)
        problem = self.validate_options()
        self.show_message(problem or "")

    # --- form --------------------------------------------------------------------------------------------------

    def _set(self, name: str, value) -> None:
        self.state.preprocess[name] = value
        self.show_message("")

    @on(Checkbox.Changed)
    def _checkbox(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id and event.checkbox.id.startswith("pp-"):
            self._set(event.checkbox.id[3:], event.value)

    @on(Select.Changed)
    def _select(self, event: Select.Changed) -> None:
        if event.select.id and event.select.id.startswith("pp-") and event.select.id != "pp-captioner":
            self._set(event.select.id[3:], event.value)

    @on(Input.Changed)
    def _input(self, event: Input.Changed) -> None:
        if event.input.id and event.input.id.startswith("pp-"):
            self._take(event.input)

    def _take(self, widget: Input) -> None:
        """A text field's value into the state (numbers parsed; a bad one marked and said)."""
        name = widget.id[3:]
        field = next(f for f in option_fields() if f["name"] == name)
        text = widget.value.strip()
        try:
            value = int(text) if field["type"] == "int" else float(text) if field["type"] == "float" else text
        except ValueError:
            widget.add_class("-invalid")
            self.show_message(f"{name.replace('_', ' ')}: not a number")
            return
        self._set(name, value)
        problem = self.validate_options()
        if problem:
            self.show_message(problem)

    def _sync_form(self) -> None:
        """Every text field's current value into the state (their Changed events may still be on their way)."""
        for widget in self.query(".form-field"):
            if isinstance(widget, Input) and (widget.id or "").startswith("pp-"):
                self._take(widget)

    def validate_options(self) -> str | None:
        """The first problem with the options (its input marked invalid), or None."""
        from core.errors import FieldError
        from core.prep.options import PreprocessOptions

        for widget in self.query(".form-field"):
            widget.remove_class("-invalid")
        try:
            PreprocessOptions.from_dict(dict(self.state.preprocess))
        except FieldError as exc:
            for widget in self.query(f"#pp-{exc.field}"):
                widget.add_class("-invalid")
            return error_text(exc)
        except Exception as exc:
            return error_text(exc)
        return None

    # --- running -----------------------------------------------------------------------------------------------

    @on(Button.Pressed, "#pp-run")
    def _run_pressed(self) -> None:
        self.action_run()

    class RunAfterKeys(Message):
        """Posted to the focused field by ctrl+r: it bubbles up to the screen after the keys already sent to that
        field, so a run typed right after a value (a burst, a paste) runs with that value."""

    def action_run(self) -> None:
        (self.focused or self).post_message(self.RunAfterKeys())

    @on(RunAfterKeys)
    def _run_after_keys(self, event: Message) -> None:
        event.stop()
        self._sync_form()
        problem = self.validate_options()
        if problem:
            self.show_message(problem)
            return
        self.look_at_dest(self.state.dataset)

    @work(thread=True, exclusive=True, group="dest", exit_on_error=False)
    def look_at_dest(self, dataset: str) -> None:
        """Whether the destination already holds files (read off the UI thread), then run or ask first."""
        dest = Path(dataset).expanduser()
        has_files = dest.is_dir() and any(dest.iterdir())
        self.app.call_from_thread(self._start, dataset, has_files)

    def _start(self, dataset: str, has_files: bool) -> None:
        if has_files and not self.state.preprocess.get("overwrite"):
            def answered(yes: bool | None) -> None:
                if yes:
                    self.preprocess(overwrite=True)

            self.app.push_screen(ConfirmModal(f"{dataset} already has files. Overwrite them?",
                                              "Your source images are never modified."), answered)
            return
        self.preprocess()

    @work(exclusive=True, group="preprocess", exit_on_error=False)
    async def preprocess(self, overwrite: bool = False) -> None:
        values = dict(self.state.preprocess)
        if overwrite:
            values["overwrite"] = True
        bar = self.query_one("#pp-progress", ProgressBar)
        log = self.query_one("#pp-skipped", RichLog)
        status = self.query_one("#pp-status", Static)
        log.clear()
        warnings = [0]
        bar.update(total=None, progress=0)
        bar.display = True
        status.update("starting…")
        self.show_message("")
        self.running = True

        def on_event(event: dict) -> None:
            kind = event.get("type")
            if kind == "progress":
                bar.update(total=event.get("total") or None, progress=event.get("done", 0))
                status.update(f"{event.get('done', 0)}/{event.get('total', '?')}  {Path(str(event.get('file', ''))).name}")
            elif kind == "skipped":
                log.write(f"{Path(str(event.get('file', ''))).name}: {event.get('reason', '')}")
            elif kind == "warning":
                warnings[0] += 1
                log.write(f"warning: {event.get('message', '')}")
            elif kind == "finished":
                n = warnings[0]
                status.update(f"[green]done: {event.get('written', 0)} written, {event.get('skipped', 0)} skipped, "
                              f"{n} warning{'s' if n != 1 else ''}[/]")

        try:
            await run_jsonl(["preprocess", self.state.source, self.state.dataset, "--jsonl", *cli_args(values)],
                            on_event, what="Preprocessing")
        finally:
            self.running = False
        self.show_message("Preprocessing finished. Next (ctrl+n) reviews the captions.", "ok")

    running = False

    def check(self) -> str | None:
        if self.running:
            return "Preprocessing is still running."
        try:
            n = len(list_images(self.state.dataset))
        except Exception:
            n = 0
        if n == 0:
            return "Run preprocessing first (ctrl+r): the destination has no images yet."
        return None
