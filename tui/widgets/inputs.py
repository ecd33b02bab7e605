"""Text fields that keep a burst of keys in order.

Textual's Input inserts printable keys in its own key handler, but runs its editing bindings (backspace, ctrl+u,
ctrl+w, …) only when the key has bubbled up to the App. Keys pasted or typed in a burst reach the field first, so
`ctrl+u 512` inserted "512" and then deleted it. Here the field's own bindings run in its key handler, in the order
the keys arrived. Screen actions that move the focus are priority bindings and use `Screen.set_focus` (which is
immediate, unlike `Widget.focus`), so the keys after them reach the new field.
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Checkbox, Input

REFUSAL_REASONS = {"integer": "takes a whole number", "number": "takes a number"}


class OrderedInput(Input):
    """An Input whose own key bindings run in the order keys arrive, and which says why it refused a character
    (posting `Refused`, which the screen shows) instead of dropping it silently. `name` is the field's label in
    that message."""

    class Refused(Message):
        def __init__(self, input: "OrderedInput", text: str) -> None:
            super().__init__()
            self.input = input
            self.text = text

        @property
        def sentence(self) -> str:
            field = self.input.name or "This field"
            value = self.input.value
            if self.input.max_length and len(value) + len(self.text) > self.input.max_length:
                why = f"holds at most {self.input.max_length} characters"
            else:
                why = REFUSAL_REASONS.get(self.input.type, "does not take that")
            return f"{field} {why}: “{self.text}” was not typed."

    _attempt = ""

    def replace(self, text: str, start: int, end: int) -> None:
        self._attempt = text
        super().replace(text, start, end)

    def restricted(self) -> None:
        self.post_message(self.Refused(self, self._attempt))

    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:
            for binding in self._bindings.key_to_bindings.get(event.key, ()):
                if binding.priority:
                    continue
                if await self.app.run_action(binding.action, self):
                    event.stop()
                    event.prevent_default()
                    return
        await super()._on_key(event)


def complete_path(text: str) -> str | None:
    """Tab completion for a path: the one entry that starts with what follows the last "/", or the longest prefix
    several share (folders get a trailing "/"). None when there is nothing to add."""
    import os

    if not text:
        return None
    expanded = os.path.expanduser(text)
    folder, partial = os.path.split(expanded)
    try:
        names = sorted(n for n in os.listdir(folder or ".") if n.startswith(partial)
                       and (partial.startswith(".") or not n.startswith(".")))
    except OSError:
        return None
    if not names:
        return None
    common = os.path.commonprefix(names)
    if len(names) == 1 and os.path.isdir(os.path.join(folder or ".", common)):
        common += "/"
    if common == partial:
        return None
    head = text[: len(text) - len(partial)] if partial else text
    return head + common


class PathInput(OrderedInput):
    """A path field: Tab completes the path (like a shell); with nothing to complete it moves on, as Tab does."""

    # priority: it shows in the footer over the App's Tab, which runs it (TiwizApp.action_tab) in the keys' order
    BINDINGS = [Binding("tab", "complete", "Complete path", priority=True)]

    def action_complete(self) -> None:
        completed = complete_path(self.value[: self.cursor_position]) if self.cursor_position == len(self.value) \
            else None
        if completed is None:
            self.screen.focus_next()
            return
        self.value = completed
        self.cursor_position = len(completed)


class Tick(Checkbox):
    """A checkbox whose box is empty when off: Textual's draws the same X either way (only its colour differs), and
    users read options that were off as on."""

    @property
    def _button(self):
        from textual.content import Content

        button = super()._button
        if self.value:
            return button
        spans = list(button.spans)
        return Content(button.plain.replace(self.BUTTON_INNER, " "), spans)
