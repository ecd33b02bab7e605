"""What every wizard screen shares: the stage header, the footer, Next/Back keys, and errors shown as messages."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual import work

from core.safe_text import safe_text
from tui.errors import error_text  # noqa: F401  (screens import it from here)
from tui.state import STAGE_TITLES, WIZARD_STAGES
from tui.workers import WorkerResults


# What a key says in a footer narrower than 80 columns (with less space between the keys), so every key fits at 60.
SHORT_KEYS = {"Complete path": "Complete", "Save TOML": "Save", "Load TOML": "Load", "Train again": "Again", "Best step": "Best",
              "Full size": "Full", "Resume run": "Resume", "Attach run": "Attach", "Preview now": "Preview",
              "Save now": "Save"}


TRAIL_TITLES = {"training": "Training"}  # in the header's trail of stages, where room is short


class NarrowFooter(Footer):
    """The footer; below 80 columns compact, with the short words of SHORT_KEYS."""

    def on_resize(self, event) -> None:
        narrow = event.size.width < 80
        if narrow != self.compact:
            self.compact = narrow
            self.call_after_refresh(self.recompose)

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if self.compact and getattr(widget, "description", None):
                widget.description = SHORT_KEYS.get(widget.description, widget.description)
            yield widget


class StageHeader(Static):
    """"tiwiz · 3/6 Folders" plus the trail of stages (only the stage and the next one where the trail does not
    fit)."""

    DEFAULT_CSS = """
    StageHeader { dock: top; height: 1; background: $primary-background; color: $text; padding: 0 1; }
    """

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def render(self):
        from rich.text import Text

        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("tiwiz ", "bold")
        if self.stage not in WIZARD_STAGES:
            text.append(STAGE_TITLES.get(self.stage, self.stage), "bold")
            return text
        at = WIZARD_STAGES.index(self.stage)
        text.append(f"{at + 1}/{len(WIZARD_STAGES)} ")
        for titles in (STAGE_TITLES, {**STAGE_TITLES, **TRAIL_TITLES}):  # the full trail where it fits
            if len(text) + sum(len(titles[name]) + 2 for name in WIZARD_STAGES) <= self.content_size.width:
                for name in WIZARD_STAGES:
                    text.append(f" {titles[name]} ", "reverse" if name == self.stage else "dim")
                return text
        text.append(f" {STAGE_TITLES[self.stage]} ", "reverse")
        if at + 1 < len(WIZARD_STAGES):
            text.append(f"  next: {STAGE_TITLES[WIZARD_STAGES[at + 1]]}", "dim")
        return text


class WizardScreen(WorkerResults, Screen):
    """A wizard stage. Subclasses set STAGE, compose their body in `compose_body`, save edits into `self.state`
    as they happen, and return an error message from `check()` when Next must not proceed."""

    STAGE = ""
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("f9", "next", "Next", show=False, priority=True),  # a browser keeps ctrl+n (new window)
    ]

    @property
    def state(self):
        return self.app.state

    def compose(self) -> ComposeResult:
        yield StageHeader(self.STAGE)
        yield from self.compose_body()
        yield Static("", id="message", classes="message")
        yield NarrowFooter()

    def compose_body(self) -> ComposeResult:
        yield from ()

    # --- messages ----------------------------------------------------------------------------------------------

    _clear_on_edit = False

    def show_message(self, text: str, kind: str = "error", *, until_edit: bool = False) -> None:
        """Show `text` above the footer. `until_edit`: it is about the form's current values (a refused Next), so the
        next edit of any field clears it instead of leaving a stale complaint."""
        show_message(self, text, kind)
        self._clear_on_edit = bool(text) and until_edit

    def _form_edited(self) -> None:
        if self._clear_on_edit:
            self.show_message("")

    # After the screens' own change handlers (they may set a newer message, which then stays).
    def on_input_changed(self, event) -> None:
        self._form_edited()

    def on_checkbox_changed(self, event) -> None:
        self._form_edited()

    def on_select_changed(self, event) -> None:
        self._form_edited()

    def on_ordered_input_refused(self, event) -> None:
        event.stop()
        self.show_message(event.sentence, "warning")

    # --- navigation --------------------------------------------------------------------------------------------

    def check(self) -> str | None:
        """An error message when the stage is not complete, else None. Runs on the UI thread: no file I/O here."""
        return None

    def check_files(self) -> str | None:
        """The checks of Next that read files or start processes (folders, model headers, preflight): run in a
        worker after `check` passed; an error message, else None."""
        return None

    def action_next(self) -> None:
        problem = self.check()
        if problem:
            self.show_message(problem, until_edit=True)
            return
        if type(self).check_files is WizardScreen.check_files:
            self.proceed()
            return
        self.show_message("Checking…", "info")
        self.next_checks()

    @work(thread=True, exclusive=True, group="next", exit_on_error=False)
    def next_checks(self) -> str | None:
        return self.check_files()

    def next_checks_done(self, problem: str | None) -> None:
        if problem:
            self.show_message(problem, until_edit=True)
            return
        self.show_message("")
        self.proceed()

    def proceed(self) -> None:
        """What Next does once `check` passes: the next stage."""
        self.show_message("")
        self.app.next_stage(self.STAGE)

    def action_back(self) -> None:
        self.app.prev_stage(self.STAGE)


class Row(Horizontal):
    """A label + field row in a form."""

    DEFAULT_CSS = """
    Row { height: auto; }
    """


def show_message(screen, text: str, kind: str = "error") -> None:
    """A readable line above the footer in the screen's `#message` Static (errors in red); empty text hides it."""
    widget = screen.query_one("#message", Static)
    widget.update(safe_text(text))  # messages quote file names and run events: never raw terminal escapes
    widget.set_class(bool(text), "visible")
    for k in ("error", "info", "ok", "warning"):
        widget.set_class(k == kind, k)
