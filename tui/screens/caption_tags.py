"""The Captions screen's tag view and bulk tag edits: the list of every tag with its count (sortable), the filter's
`tag:NAME` form (find images by tag), and the one-line bulk-edit field that says what an edit will do before it runs.

Bulk edits apply to the images the filter shows (every image when there is no filter), in a worker with progress."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from core.errors import TiwizError
from core.prep.captions import clean_stem, filter_items, tag_counts
from tui.widgets.inputs import OrderedInput

TAG_FILTER = "tag:"
BULK_PROGRESS_EVERY_S = 0.1


def filter_by(items: list, text: str) -> list:
    """The items the filter text selects: `tag:NAME` matches a whole tag, anything else a substring of the caption
    or the file name."""
    text = text.strip()
    if text.casefold().startswith(TAG_FILTER):
        tag = text[len(TAG_FILTER):].strip()
        return filter_items(items, tag=tag) if tag else list(items)
    return filter_items(items, text)


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def bulk_question(kind: str, scope: list, total: int) -> str:
    """What the bulk edit of `kind` ("add", "remove", "rename") will do to the `scope` items (the filtered ones when
    fewer than `total`), said before it runs."""
    where = f"all {_images(total)}" if len(scope) == total else f"the {_images(len(scope))} the filter shows"
    keys = "Enter applies it, Esc cancels."
    if kind == "add":
        missing = [i for i in scope if i.is_missing]
        text = f"Add a tag at the start of the captions of {where}."
        if missing:
            example = clean_stem(missing[0].image.stem)
            shown = f" (“{example}”)" if example else ""
            verb = "has" if len(missing) == 1 else "have"
            text += (f" {_images(len(missing))} {verb} no caption file: each gets one with the tag and its file name "
                     f"as caption{shown}, the caption the trainer uses now.")
        return f"{text} {keys}"
    if kind == "remove":
        return f"Remove a tag from the captions of {where}; images without a caption file are left alone. {keys}"
    return f"Rename a tag in the captions of {where}, written as: old tag => new tag. {keys}"


def local_findings(items: list, trigger: str = "") -> tuple[dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """The doctor's caption and tag findings computed from the index: ({file name: [(severity, message)]},
    [(severity, message)] about the whole set)."""
    from core.prep.doctor_captions import caption_findings, tag_findings

    per_file: dict[str, list[tuple[str, str]]] = {}
    general: list[tuple[str, str]] = []
    findings = caption_findings(items) + tag_findings(items, trigger)
    for f in findings:
        if f.code == "trigger-is-tag" or not f.files:  # one finding about many files: said once
            general.append((f.severity, f.message))
            continue
        for name in f.files:
            per_file.setdefault(Path(name).name, []).append((f.severity, f.message))
    return per_file, general


class PrefillTag(Message):
    """Posted to the tag list when a bulk field opens over it; reaches the screen after the list's pending keys."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind


class BulkInput(OrderedInput):
    """The bulk-edit field; Esc closes it without editing anything."""

    BINDINGS = [Binding("escape", "screen.cancel_bulk", "Cancel", show=False)]


class TagList(OptionList):
    """Every tag of the dataset with the number of captions that use it; `s` sorts by count or by name."""

    BINDINGS = [Binding("s", "sort", "Sort", show=False)]  # the header says it

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.by_name = False
        self.tags: list[tuple[str, int]] = []

    async def _on_key(self, event) -> None:
        """The list's own keys (↑/↓, s, Enter) run here, in the order keys arrive, not after they bubble up to the
        app: f3/f4 right after ↓ in a burst then take the tag ↓ moved to (as `OrderedInput` does for fields)."""
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if not binding.priority and await self.app.run_action(binding.action, self):
                event.stop()
                event.prevent_default()
                return
        await super()._on_key(event)

    def show_counts(self, items: list) -> None:
        """Fill the list from the index (in memory), keeping the highlighted tag when it is still there."""
        current = self.current_tag()
        counts = list(tag_counts(items).items())
        if self.by_name:
            counts.sort(key=lambda kv: (kv[0].casefold(), -kv[1]))
        self.tags = counts
        self.clear_options()
        self.add_options([Option(f"{n:>4} {tag}", id=str(i)) for i, (tag, n) in enumerate(counts)])
        names = [t for t, _ in counts]
        if counts:
            self.highlighted = names.index(current) if current in names else 0

    def current_tag(self) -> str | None:
        index = self.highlighted
        if index is None or not (0 <= index < len(self.tags)):
            return None
        return self.tags[index][0]

    def action_sort(self) -> None:
        self.by_name = not self.by_name
        self.screen.refresh_tags()


class TagEditing:
    """The tag view and bulk edits of `CaptionsScreen` (which routes the widgets' events here)."""

    bulk_kind: str | None = None  # the bulk edit the bulk field is open for
    bulk_running = False

    # --- the tag view --------------------------------------------------------------------------------------------

    def action_toggle_tags(self) -> None:
        """f6: every tag of the dataset with its count in place of the image list (again: back to the images)."""
        self.save_current()
        tags = self.query_one("#cap-tags", TagList)
        tags.display = not tags.display
        self.query_one("#cap-list", OptionList).display = not tags.display
        if tags.display:
            tags.show_counts(self.index_items)
            self.set_focus(tags)
        else:
            self.set_focus(self.query_one("#cap-input", Input))
        self._update_count()

    def refresh_tags(self) -> None:
        self.query_one("#cap-tags", TagList).show_counts(self.index_items)
        self._update_count()

    def find_by_tag(self) -> None:
        """Enter on a tag: the images that have it (the filter `tag:NAME`)."""
        tag = self.query_one("#cap-tags", TagList).current_tag()
        if tag is None:
            return
        self.action_toggle_tags()
        self.query_one("#cap-filter", Input).value = f"{TAG_FILTER}{tag}"

    # --- bulk ----------------------------------------------------------------------------------------------------

    def action_add_tag(self) -> None:
        self.open_bulk("add")

    def action_remove_tag(self) -> None:
        self.open_bulk("remove")

    def action_replace_tag(self) -> None:
        self.open_bulk("rename")

    def open_bulk(self, kind: str) -> None:
        """Open the bulk field for `kind`, saying first what the edit will do and to which images."""
        self.save_current()
        if self.bulk_running:
            self.show_message("A bulk edit is still running.", "info")
            return
        scope = self.items if self.filter_text else self.index_items
        self.bulk_kind = kind
        self.query_one("#cap-bulk-label", Static).update(bulk_question(kind, scope, len(self.index_items)))
        field = self.query_one("#cap-bulk", Input)
        field.value = ""
        self.query_one("#cap-bulk-row").display = True
        tags = self.query_one("#cap-tags", TagList)
        if tags.display and kind != "add":
            # the highlighted tag, once the keys already sent to the list (↓ in a burst) have moved it
            tags.post_message(PrefillTag(kind))
        self.set_focus(field)  # at once: the keys typed after f2/f3/f4 are the tag

    def prefill(self, kind: str) -> None:
        """Put the tag list's highlighted tag before whatever was typed into the bulk field since it opened."""
        current = self.query_one("#cap-tags", TagList).current_tag()
        field = self.query_one("#cap-bulk", Input)
        if current is None or self.bulk_kind != kind:
            return
        field.value = current + (" => " if kind == "rename" else "") + field.value
        field.cursor_position = len(field.value)

    def action_cancel_bulk(self) -> None:
        self.bulk_kind = None
        self.query_one("#cap-bulk-row").display = False
        tags = self.query_one("#cap-tags", TagList)
        self.set_focus(tags if tags.display else self.query_one("#cap-input", Input))

    def submit_bulk(self, text: str) -> None:
        kind, value = self.bulk_kind, text.strip()
        self.action_cancel_bulk()
        if kind is None or not value:
            return
        self.save_current()  # a caption typed just before f2/f3/f4 in a burst
        images = [i.image for i in self.items] if self.filter_text else None
        self.query_one("#cap-input", Input).disabled = True  # no edit can race the bulk edit
        self.bulk_running = True
        self.run_bulk(kind, value, images)

    @work(thread=True, exclusive=True, group="bulk", exit_on_error=False)
    def run_bulk(self, kind: str, value: str, images: list | None) -> None:
        shown = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - shown[0] >= BULK_PROGRESS_EVERY_S:
                shown[0] = now
                self.app.call_from_thread(self.show_message, f"Editing captions… {done}/{total}", "info")

        changed, error, items = 0, None, None
        try:
            changed = self._apply_bulk(kind, value, images, progress)
        except Exception as exc:
            error = exc
        try:
            items = self.caption_set.items()
        except Exception as exc:
            error = error or exc
        self.app.call_from_thread(self._bulk_done, changed, error, items)

    def _apply_bulk(self, kind: str, value: str, images, progress) -> int:
        captions = self.caption_set
        if kind == "add":
            return captions.add_tag(value, position="prepend", images=images, progress=progress)
        if kind == "remove":
            return captions.remove_tag(value, images=images, progress=progress)
        if "=>" not in value:
            raise TiwizError("Write the rename as: old tag => new tag")
        old, new = (part.strip() for part in value.split("=>", 1))
        return captions.replace_tag(old, new, images=images, progress=progress)

    def _bulk_done(self, changed: int, error: BaseException | None, items: list | None) -> None:
        from tui.screens.base import error_text

        self.bulk_running = False
        field = self.query_one("#cap-input", Input)
        field.disabled = False
        if items is not None:
            self.index_items = items
            self.reload(keep=self.shown)
        if error is not None:
            self.show_message(error_text(error))
        else:
            self.show_message(f"{changed} caption file{'s' if changed != 1 else ''} changed.", "ok")
        tags = self.query_one("#cap-tags", TagList)
        self.set_focus(tags if tags.display else field)
