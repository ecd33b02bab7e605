"""Caption review: the image list beside a preview, the caption edited in place with its CLIP token count, bulk tag
add/remove/replace, the dataset doctor's findings shown beside the image they concern, and the image's training
size under the current training settings (its aspect-ratio bucket, or the centre crop).

The folder is read once, in a worker, into an index of every image and its caption; the filter works on that index
in memory, edits update it, and bulk edits run in a worker (with progress) and re-read it."""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from core.prep.captions import CaptionSet, filter_items, split_tags
from core.tokens import TOKEN_LIMIT, count_tokens
from tui.bucket_scan import SIZES, fit_text, wizard_config
from tui.jobs import run_json
from tui.messages import ImageSizesRead
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import PromptModal
from tui.widgets.image_preview import ImagePreview
from tui.widgets.inputs import OrderedInput


BULK_PROGRESS_EVERY_S = 0.1
SIZES_POST_EVERY_S = 0.2  # a big folder's image sizes arrive in batches this often
CAPTION_PLACEHOLDER = "a caption: comma-separated tags or a sentence"


def _finding_fields(f) -> tuple[list[str], str, str]:
    """(files, severity, message) of a `tiwiz doctor --json` finding."""
    if not isinstance(f, dict):
        return [], "info", str(f)
    files = f.get("files") or []
    files = [str(x) for x in files] if isinstance(files, list) else [str(files)]
    return files, str(f.get("severity") or "info"), str(f.get("message") or f.get("code") or "")


def item_label(item) -> str:
    mark = " "
    if item.is_missing:
        mark = "∅"
    elif item.over_limit:
        mark = "!"
    name = item.image.name
    if len(name) > 22:
        name = name[:21] + "…"
    return f"{mark} {name:<22} {item.tokens:>3}t"


class CaptionInput(OrderedInput):
    """The caption field: ↑/↓ and Enter move between images from inside the field's own key handler, so keys typed
    right after them go to the next image's caption, not the one being left."""

    BINDINGS = [
        Binding("up", "screen.move(-1)", "Prev image", show=False),
        Binding("down", "screen.move(1)", "Next image", show=False),
        Binding("enter", "screen.move(1)", "Save and next", show=False),
    ]


class CaptionsScreen(WizardScreen):
    STAGE = "captions"
    DEFAULT_CSS = """
    #cap-left { width: 34; }
    #cap-list { height: 1fr; }
    #cap-right { width: 1fr; padding-left: 1; }
    #cap-preview { height: 1fr; min-height: 4; }
    #cap-findings { height: auto; max-height: 4; }
    """
    BINDINGS = [
        # short descriptions: with Back, Next, Filter and Quit they fit an 80-column footer (the hint line explains)
        Binding("f2", "add_tag", "+tag"),
        Binding("f3", "remove_tag", "-tag"),
        Binding("f4", "replace_tag", "Swap"),
        Binding("f5", "toggle_findings", "Doctor"),
        Binding("ctrl+f", "focus_filter", "Filter", priority=True),
        Binding("pagedown", "move(1)", "Next image", show=False),
        Binding("pageup", "move(-1)", "Prev image", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list = []
        self.index = 0
        self.findings: dict[str, list[tuple[str, str]]] = {}
        self.general_findings: list[tuple[str, str]] = []
        self.filter_text = ""
        self.shown: Path | None = None  # the image whose caption the caption field holds
        self.total: int | None = None  # all images, when a filter shows fewer
        self.doctor_count: int | None = None
        self.index_items: list = []  # every image of the folder and its caption, read once by `load_index`
        self.loaded = False
        self.sizes: dict[str, tuple[int, int] | None] = {}  # image file name -> header size (None: unreadable)

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="body"):
            with Vertical(id="cap-left"):
                yield Static("", id="cap-count", classes="hint")
                yield OrderedInput("", placeholder="filter: text in caption or name (ctrl+f)", id="cap-filter", compact=True)
                yield OptionList(id="cap-list")
            with Vertical(id="cap-right"):
                yield ImagePreview(id="cap-preview")
                yield Label("", id="cap-title")
                yield Static("", id="cap-bucket", classes="hint", markup=False)
                yield CaptionInput("", placeholder=CAPTION_PLACEHOLDER, id="cap-input")
                yield Static("", id="cap-tokens")
                yield Static("", id="cap-findings", classes="hint", markup=False)
                yield Static("", id="cap-all-findings", markup=False)
        yield Static("↑/↓ previous/next image, Enter next (captions save as you go) · f2/f3/f4 add, remove, "
                     "replace a tag in every caption · f5 the doctor's findings", classes="hint keys-hint")

    def on_mount(self) -> None:
        self.query_one("#cap-all-findings", Static).display = False
        self.query_one("#cap-title", Label).update("Reading the captions…")
        self.query_one("#cap-input", Input).focus()
        self.load_index()
        self.load_sizes()
        self.action_doctor()

    @work(thread=True, exclusive=True, group="index", exit_on_error=False)
    def load_index(self) -> None:
        """Read every caption of the folder (and count its tokens) off the UI thread."""
        try:
            items, error = self.caption_set.items(), None
        except Exception as exc:
            items, error = [], exc
        self.app.call_from_thread(self._index_loaded, items, error)

    @work(thread=True, exclusive=True, group="sizes", exit_on_error=False)
    def load_sizes(self) -> None:
        """Read each image's size from its header (cached per file) off the UI thread, posted in batches."""
        from textual.worker import get_current_worker

        from core.prep.captions import list_images

        worker = get_current_worker()
        try:
            paths = list_images(self.state.dataset)
        except Exception:  # the index loader reports an unreadable folder
            return
        batch, posted = {}, time.monotonic()
        for path in paths:
            if worker.is_cancelled:
                return
            batch[path] = SIZES.size(path)
            if time.monotonic() - posted >= SIZES_POST_EVERY_S:
                self.post_message(ImageSizesRead(batch))
                batch, posted = {}, time.monotonic()
        self.post_message(ImageSizesRead(batch))

    def on_image_sizes_read(self, message: ImageSizesRead) -> None:
        self.sizes.update((Path(path).name, size) for path, size in message.sizes.items())
        if self.items and 0 <= self.index < len(self.items):
            self._show_bucket(self.items[self.index].image.name)

    def _show_bucket(self, name: str) -> None:
        """The selected image's training size under the wizard's current training settings (the Training screen's
        defaults until it is visited)."""
        text = fit_text(wizard_config(self.state), self.sizes[name]) if name in self.sizes else "reading the size…"
        self.query_one("#cap-bucket", Static).update(text)

    def _index_loaded(self, items: list, error: BaseException | None) -> None:
        self.index_items, self.loaded = items, True
        if error is not None:
            self.show_message(error_text(error))
        self.reload(keep=self.shown)

    @property
    def caption_set(self) -> CaptionSet:
        return CaptionSet(self.state.dataset)

    def reload(self, keep: Path | None = None) -> None:
        """Rebuild the list from the index and the filter (no disk access)."""
        total = None
        self.items = list(self.index_items)
        if self.filter_text:
            total = len(self.items)
            self.items = filter_items(self.items, self.filter_text)
        menu = self.query_one("#cap-list", OptionList)
        menu.clear_options()
        for item in self.items:
            menu.add_option(Option(item_label(item), id=item.image.name))
        self.total = total
        self._update_count()
        if keep is not None:
            names = [i.image for i in self.items]
            self.index = names.index(keep) if keep in names else 0
        self.show_item(min(self.index, max(len(self.items) - 1, 0)))

    def _update_count(self) -> None:
        """The header: images shown, uncaptioned, over the token limit, doctor findings (recounted on every edit)."""
        missing = sum(1 for i in self.items if i.is_missing)
        over = sum(1 for i in self.items if i.over_limit)
        n = len(self.items)
        shown = f"{n} of {self.total} images match" if self.total is not None else f"{n} images"
        text = f"{shown} · {missing} uncaptioned · {over} >{TOKEN_LIMIT}t"
        if self.doctor_count is not None:
            text += f" · doctor: {self.doctor_count} finding{'s' if self.doctor_count != 1 else ''}"
        self.query_one("#cap-count", Static).update(text)

    def show_item(self, index: int) -> None:
        if not self.items:
            self.query_one("#cap-title", Label).update(
                "No image matches the filter." if self.filter_text else
                "No images in this folder." if self.loaded else "Reading the captions…")
            self.query_one("#cap-bucket", Static).update("")
            return
        self.index = index
        item = self.items[index]
        menu = self.query_one("#cap-list", OptionList)
        with menu.prevent(OptionList.OptionHighlighted):  # only the user's own moves in the list come back as events
            menu.highlighted = index
        self.query_one("#cap-preview", ImagePreview).set_image(item.image)
        self.query_one("#cap-title", Label).update(f"{index + 1}/{len(self.items)}  {item.image.name}")
        field = self.query_one("#cap-input", Input)
        self.shown = item.image
        # no caption file: say what the trainer will use instead (the cleaned file name)
        field.placeholder = (f"no caption file: the trainer uses “{item.training_caption}”" if item.is_missing
                             else CAPTION_PLACEHOLDER)
        with field.prevent(Input.Changed):
            field.value = item.caption
        field.cursor_position = len(item.caption)
        self._show_tokens(item.caption)
        self._show_findings(item.image.name)
        self._show_bucket(item.image.name)

    def _show_tokens(self, caption: str) -> None:
        n = count_tokens(caption)
        tags = len(split_tags(caption))
        text = f"{n} tokens · {tags} tags"
        if n > TOKEN_LIMIT:
            text = f"[yellow]{text} · over {TOKEN_LIMIT}: the rest spills into a second prompt chunk[/]"
        self.query_one("#cap-tokens", Static).update(text)

    def _show_findings(self, name: str) -> None:
        lines = [f"{sev}: {msg}" for sev, msg in self.findings.get(name, [])]
        if not lines and self.general_findings and self.index == 0:
            lines = [f"{sev}: {msg}" for sev, msg in self.general_findings[:3]]
        self.query_one("#cap-findings", Static).update("\n".join(lines[:4]))

    # --- editing -----------------------------------------------------------------------------------------------

    @on(Input.Changed, "#cap-input")
    def _typed(self, event: Input.Changed) -> None:
        self._show_tokens(event.value)

    def save_current(self) -> None:
        """Write the caption field to the image it was loaded for (never to whatever is highlighted now)."""
        if not self.items or self.shown is None:
            return
        index = next((i for i, it in enumerate(self.items) if it.image == self.shown), None)
        if index is None:
            return
        item = self.items[index]
        text = self.query_one("#cap-input", Input).value.strip()
        if text == item.caption and item.has_file:
            return
        try:
            self.items[index] = self.caption_set.set_caption(item.image, text)  # one small atomic write
        except Exception as exc:
            self.show_message(error_text(exc))
            return
        self.index_items = [self.items[index] if it.image == item.image else it for it in self.index_items]
        self.query_one("#cap-list", OptionList).replace_option_prompt_at_index(index, item_label(self.items[index]))
        self._update_count()

    def action_focus_filter(self) -> None:
        self.set_focus(self.query_one("#cap-filter", Input))  # at once: the keys after ctrl+f are for the filter

    @on(Input.Changed, "#cap-filter")
    def _filtered(self, event: Input.Changed) -> None:
        """Show only the images whose caption or file name contains the text; bulk tag edits still cover all."""
        self.save_current()
        keep = self.items[self.index].image if self.items else None
        self.filter_text = event.value.strip()
        self.reload(keep=keep)

    @on(Input.Submitted, "#cap-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.query_one("#cap-input", Input).focus()

    def action_move(self, delta: int) -> None:
        if not self.items:
            return
        self.save_current()
        self.show_item(max(0, min(len(self.items) - 1, self.index + delta)))

    @on(OptionList.OptionHighlighted, "#cap-list")
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        index = event.option_index
        # A highlight posted for a list that has since been rebuilt (the filter changed) is stale: ignore it.
        if not (0 <= index < len(self.items)) or event.option.id != self.items[index].image.name:
            return
        if index != self.index:
            self.save_current()
            self.show_item(index)

    @on(OptionList.OptionSelected, "#cap-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#cap-input", Input).focus()

    # --- bulk ----------------------------------------------------------------------------------------------------

    def _bulk(self, question: str, apply) -> None:
        """Ask for the tag, then run `apply(value, progress)` over every caption in a worker."""
        self.save_current()

        def answered(value: str | None) -> None:
            if value is None or not value.strip():
                return
            self.query_one("#cap-input", Input).disabled = True  # no edit can race the bulk edit
            self.run_bulk(apply, value.strip())

        self.app.push_screen(PromptModal(question), answered)

    @work(thread=True, exclusive=True, group="bulk", exit_on_error=False)
    def run_bulk(self, apply, value: str) -> None:
        shown = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - shown[0] >= BULK_PROGRESS_EVERY_S:
                shown[0] = now
                self.app.call_from_thread(self.show_message, f"Editing captions… {done}/{total}", "info")

        changed, error, items = 0, None, None
        try:
            changed = apply(value, progress)
        except Exception as exc:
            error = exc
        try:
            items = self.caption_set.items()
        except Exception as exc:
            error = error or exc
        self.app.call_from_thread(self._bulk_done, changed, error, items)

    def _bulk_done(self, changed: int, error: BaseException | None, items: list | None) -> None:
        field = self.query_one("#cap-input", Input)
        field.disabled = False
        if items is not None:
            self.index_items = items
            self.reload(keep=self.shown)
        if error is not None:
            self.show_message(error_text(error))
        else:
            self.show_message(f"{changed} caption file{'s' if changed != 1 else ''} changed.", "ok")
        field.focus()

    def action_add_tag(self) -> None:
        self._bulk("Add this tag to every caption (at the start):",
                   lambda tag, progress: self.caption_set.add_tag(tag, position="prepend", progress=progress))

    def action_remove_tag(self) -> None:
        self._bulk("Remove this tag from every caption:",
                   lambda tag, progress: self.caption_set.remove_tag(tag, progress=progress))

    def action_replace_tag(self) -> None:
        def apply(text: str, progress) -> int:
            if "=>" not in text:
                raise ValueError("Write it as: old tag => new tag")
            old, new = (part.strip() for part in text.split("=>", 1))
            return self.caption_set.replace_tag(old, new, progress=progress)

        self._bulk("Replace a tag everywhere, written as: old tag => new tag", apply)

    # --- doctor --------------------------------------------------------------------------------------------------

    def action_doctor(self) -> None:
        self.run_doctor()

    @work(exclusive=True, group="doctor", exit_on_error=False)
    async def run_doctor(self) -> None:
        try:
            # exit 1 means "some finding is an error"; the findings are all printed either way
            result = await run_json(["doctor", self.state.dataset, "--json"], what="The dataset doctor",
                                    ok_codes=(0, 1))
        except Exception as exc:
            self.query_one("#cap-findings", Static).update(f"doctor: {error_text(exc)}")
            return
        findings = result.get("findings", result) if isinstance(result, dict) else result
        self.findings, self.general_findings = {}, []
        for f in findings if isinstance(findings, list) else []:
            files, severity, message = _finding_fields(f)
            for file in files:
                self.findings.setdefault(Path(file).name, []).append((severity, message))
            if not files:
                self.general_findings.append((severity, message))
        self.doctor_count = sum(len(v) for v in self.findings.values()) + len(self.general_findings)
        self._update_count()
        panel = self.query_one("#cap-all-findings", Static)
        if panel.display:
            panel.update(self.all_findings_text())
        if self.items:
            self._show_findings(self.items[self.index].image.name)

    def all_findings_text(self) -> str:
        lines = [f"{sev}: {msg}" for sev, msg in self.general_findings]
        for name, found in sorted(self.findings.items()):
            lines += [f"{name}: {sev}: {msg}" for sev, msg in found]
        return "\n".join(lines) if lines else "The doctor found nothing to report."

    def action_toggle_findings(self) -> None:
        """f5: run the doctor again and list every finding under the caption (again: hide the list)."""
        panel = self.query_one("#cap-all-findings", Static)
        panel.display = not panel.display
        if panel.display:
            panel.update("The doctor is checking the folder…")
            self.action_doctor()

    def check(self) -> str | None:
        self.save_current()
        if not self.loaded:
            return "Still reading the captions; try again in a moment."
        if not self.items:
            return "There are no images in the dataset folder."
        return None

    def action_back(self) -> None:
        self.save_current()
        super().action_back()
