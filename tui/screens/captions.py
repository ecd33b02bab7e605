"""Caption review: the image list beside a preview, the caption edited in place with its CLIP token count, the tag
view (every tag with its count), bulk tag add/remove/rename, the dataset doctor's findings shown beside the image
they concern, and the image's training size under the current training settings (its aspect-ratio bucket, or the
centre crop).

The folder is read once, in a worker, into an index of every image and its caption; the filter works on that index
in memory, edits update it, and bulk edits run in a worker (with progress) and re-read it. Only an edit writes a
file: moving through images without caption files writes nothing. The doctor's caption and tag findings are
recomputed from the index after every edit, so none stays after the edit that fixed it."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from core.prep.captions import CaptionSet, split_tags
from core.tokens import TOKEN_LIMIT, count_tokens
from tui.bucket_scan import SIZES, fit_text, wizard_config
from tui.jobs import run_json
from tui.messages import ImageSizesRead
from tui.screens.base import WizardScreen, error_text
from tui.screens.caption_tags import BulkInput, TagEditing, TagList, filter_by, local_findings
from tui.widgets.image_preview import ImagePreview
from tui.widgets.inputs import OrderedInput


SIZES_POST_EVERY_S = 0.2  # a big folder's image sizes arrive in batches this often
CAPTION_PLACEHOLDER = "tags, or a sentence"


def _finding_fields(f) -> tuple[list[str], str, str]:
    """(files, severity, message) of a `tiwiz doctor --json` finding."""
    if not isinstance(f, dict):
        return [], "info", str(f)
    files = f.get("files") or []
    files = [str(x) for x in files] if isinstance(files, list) else [str(files)]
    return files, str(f.get("severity") or "info"), str(f.get("message") or f.get("code") or "")


def item_label(item) -> str:
    """One row of the image list: a mark (∅ no caption file, ! over the token limit), the token count, the name (the
    list cuts it with an ellipsis where it is narrow, never wraps it)."""
    mark = "∅" if item.is_missing else "!" if item.over_limit else " "
    return f"{mark}{item.tokens:>3}t {item.image.name}"


class CaptionInput(OrderedInput):
    """The caption field: ↑/↓ and Enter move between images from inside the field's own key handler, so keys typed
    right after them go to the next image's caption, not the one being left."""

    BINDINGS = [
        Binding("up", "screen.move(-1)", "Prev image", show=False),
        Binding("down", "screen.move(1)", "Next image", show=False),
        Binding("enter", "screen.move(1)", "Save and next", show=False),
    ]


class CaptionsScreen(TagEditing, WizardScreen):
    STAGE = "captions"
    DEFAULT_CSS = """
    #cap-left { width: 40%; max-width: 34; min-width: 22; }
    #cap-list, #cap-tags { height: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    #cap-right { width: 1fr; padding-left: 1; }
    #cap-preview { height: 1fr; min-height: 4; }
    #cap-findings { height: auto; max-height: 4; }
    #cap-bulk-row { height: auto; }
    """
    BINDINGS = [
        # short descriptions: with Back, Next, Filter and Quit they fit an 80-column footer (the hint line explains).
        # Priority: the keys typed right after them go to the field they open, not the caption.
        Binding("f2", "add_tag", "+tag", priority=True),
        Binding("f3", "remove_tag", "-tag", priority=True),
        Binding("f4", "replace_tag", "Rename", priority=True),
        Binding("f5", "toggle_findings", "Doctor", show=False),  # in the hint line: the footer is full
        Binding("f6", "toggle_tags", "Tags", priority=True),
        # a browser keeps f3 (find), f5 (reload) and f6 (address bar)
        Binding("alt+x", "remove_tag", "-tag", show=False, priority=True),
        Binding("alt+c", "toggle_findings", "Doctor", show=False),
        Binding("alt+g", "toggle_tags", "Tags", show=False, priority=True),
        Binding("ctrl+f", "focus_filter", "Filter", priority=True),
        Binding("pagedown", "move(1)", "Next image", show=False),
        Binding("pageup", "move(-1)", "Prev image", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list = []
        self.index = 0
        self.findings: dict[str, list[tuple[str, str]]] = {}  # the doctor's image findings (the subprocess)
        self.general_findings: list[tuple[str, str]] = []
        self.local: dict[str, list[tuple[str, str]]] = {}  # caption and tag findings, from the index
        self.local_general: list[tuple[str, str]] = []
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
                yield OrderedInput("", placeholder="filter, or tag:NAME", id="cap-filter", compact=True)
                yield OptionList(id="cap-list")
                yield TagList(id="cap-tags")
            with Vertical(id="cap-right"):
                yield ImagePreview(id="cap-preview")
                yield Label("", id="cap-title")
                yield Static("", id="cap-bucket", classes="hint", markup=False)
                with Vertical(id="cap-bulk-row"):
                    yield Static("", id="cap-bulk-label", markup=False)
                    yield BulkInput("", id="cap-bulk", compact=True)
                yield CaptionInput("", placeholder=CAPTION_PLACEHOLDER, id="cap-input")
                yield Static("", id="cap-tokens")
                yield Static("", id="cap-findings", classes="hint", markup=False)
                yield Static("", id="cap-all-findings", markup=False)
        yield Static("↑↓ Enter: images (each saves) · f2 f3 f4: add, remove, rename a tag in the images shown · "
                     "f5 doctor · f6 tags", classes="hint keys-hint")

    def on_mount(self) -> None:
        self.query_one("#cap-all-findings", Static).display = False
        self.query_one("#cap-bulk-row").display = False
        self.query_one("#cap-tags", TagList).display = False
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
            self.items = filter_by(self.items, self.filter_text)
        menu = self.query_one("#cap-list", OptionList)
        menu.clear_options()
        for item in self.items:
            menu.add_option(Option(item_label(item), id=item.image.name))
        self.total = total
        self._index_changed()
        if keep is not None:
            names = [i.image for i in self.items]
            self.index = names.index(keep) if keep in names else 0
        self.show_item(min(self.index, max(len(self.items) - 1, 0)))

    def _index_changed(self) -> None:
        """After every read or edit of the index: the caption and tag findings, the header, the tag list."""
        self.local, self.local_general = local_findings(self.index_items, self.state.name)
        self._update_count()
        tags = self.query_one("#cap-tags", TagList)
        if tags.display:
            tags.show_counts(self.index_items)

    def _update_count(self) -> None:
        """The header: images shown, uncaptioned, over the token limit, doctor findings (recounted on every edit)."""
        tags = self.query_one("#cap-tags", TagList)
        if tags.display:
            order = "name" if tags.by_name else "count"
            self.query_one("#cap-count", Static).update(
                f"{len(tags.tags)} tags · by {order} (s sorts) · Enter finds")
            return
        missing = sum(1 for i in self.items if i.is_missing)
        over = sum(1 for i in self.items if i.over_limit)
        n = len(self.items)
        shown = f"{n} of {self.total} images match" if self.total is not None else f"{n} images"
        text = f"{shown} · {missing} uncaptioned · {over} >{TOKEN_LIMIT}t"
        if self.doctor_count is not None:
            count = self.doctor_count + sum(len(v) for v in self.local.values()) + len(self.local_general)
            text += f" · doctor: {count} finding{'s' if count != 1 else ''}"
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
        field.placeholder = "no caption file yet" if item.is_missing else CAPTION_PLACEHOLDER
        with field.prevent(Input.Changed):
            field.value = item.caption
        field.cursor_position = len(item.caption)
        self._show_tokens(item.caption)
        self._show_findings(item.image.name)
        self._show_bucket(item.image.name)

    def _show_tokens(self, caption: str) -> None:
        item = self.items[self.index] if self.items and 0 <= self.index < len(self.items) else None
        if not caption and item is not None and item.is_missing:
            # said on a line that wraps (a placeholder is cut at 80 columns): what the trainer uses instead
            self.query_one("#cap-tokens", Static).update(
                Text(f"No caption file: the trainer uses the file name, “{item.training_caption}”."))
            return
        n = count_tokens(caption)
        tags = len(split_tags(caption))
        text = f"{n} tokens · {tags} tags"
        if n > TOKEN_LIMIT:
            text = f"[yellow]{text} · over {TOKEN_LIMIT}: the rest spills into a second prompt chunk[/]"
        self.query_one("#cap-tokens", Static).update(text)

    def _show_findings(self, name: str) -> None:
        found = self.findings.get(name, []) + self.local.get(name, [])
        general = self.general_findings + self.local_general
        lines = [f"{sev}: {msg}" for sev, msg in found]
        if not lines and general and self.index == 0:
            lines = [f"{sev}: {msg}" for sev, msg in general[:3]]
        self.query_one("#cap-findings", Static).update("\n".join(lines[:4]))

    # --- editing -----------------------------------------------------------------------------------------------

    @on(Input.Changed, "#cap-input")
    def _typed(self, event: Input.Changed) -> None:
        self._show_tokens(event.value)

    def save_current(self) -> None:
        """Write the caption field to the image it was loaded for (never to whatever is highlighted now), and only
        when it was edited: an image without a caption file whose field is still empty keeps having none."""
        if not self.items or self.shown is None:
            return
        index = next((i for i, it in enumerate(self.items) if it.image == self.shown), None)
        if index is None:
            return
        item = self.items[index]
        text = self.query_one("#cap-input", Input).value.strip()
        if text == item.caption and (item.has_file or not text):
            return
        try:
            self.items[index] = self.caption_set.set_caption(item.image, text)  # one small atomic write
        except Exception as exc:
            self.show_message(error_text(exc))
            return
        self.index_items = [self.items[index] if it.image == item.image else it for it in self.index_items]
        self.query_one("#cap-list", OptionList).replace_option_prompt_at_index(index, item_label(self.items[index]))
        self._index_changed()
        if self.shown == item.image:
            self._show_findings(item.image.name)

    def action_focus_filter(self) -> None:
        self.set_focus(self.query_one("#cap-filter", Input))  # at once: the keys after ctrl+f are for the filter

    @on(Input.Changed, "#cap-filter")
    def _filtered(self, event: Input.Changed) -> None:
        """Show only the images whose caption or file name contains the text (`tag:NAME`: that have the tag)."""
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

    @on(OptionList.OptionSelected, "#cap-tags")
    def _tag_chosen(self, event: OptionList.OptionSelected) -> None:
        self.find_by_tag()

    def on_prefill_tag(self, message) -> None:
        message.stop()
        self.prefill(message.kind)

    @on(Input.Submitted, "#cap-bulk")
    def _bulk_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit_bulk(event.value)

    # --- doctor --------------------------------------------------------------------------------------------------

    def action_doctor(self) -> None:
        self.run_doctor()

    @work(exclusive=True, group="doctor", exit_on_error=False)
    async def run_doctor(self) -> None:
        from core.prep.doctor_captions import CAPTION_CODES, TAG_CODES

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
            if isinstance(f, dict) and f.get("code") in CAPTION_CODES + TAG_CODES:
                continue  # computed from the index, kept current after every edit
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
        lines = [f"{sev}: {msg}" for sev, msg in self.general_findings + self.local_general]
        names = sorted(set(self.findings) | set(self.local))
        for name in names:
            lines += [f"{name}: {sev}: {msg}" for sev, msg in self.findings.get(name, []) + self.local.get(name, [])]
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

    def proceed(self) -> None:
        self.propose_template()
        super().proceed()

    def propose_template(self) -> None:
        """Tag captions and no template chosen yet: train on the kind's tag template, and say why (a notification
        that outlives the screen; the Training screen shows the template with prompts from these captions)."""
        from core.prep.captions import caption_language
        from core.training.templates import DEFAULT_TEMPLATE, proposed_template

        if "template" in self.state.train or caption_language(self.index_items) != "tags":
            return
        name, why = proposed_template(DEFAULT_TEMPLATE, self.state.train.get("kind", "subject"), "tags")
        self.state.train["template"] = name
        self.app.notify(why, title=f"Template: {name}", timeout=12)
