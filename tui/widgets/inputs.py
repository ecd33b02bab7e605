"""Text fields that keep a burst of keys in order.

Textual's Input inserts printable keys in its own key handler, but runs its editing bindings (backspace, ctrl+u,
ctrl+w, …) only when the key has bubbled up to the App. Keys pasted or typed in a burst reach the field first, so
`ctrl+u 512` inserted "512" and then deleted it. Here the field's own bindings run in its key handler, in the order
the keys arrived. Screen actions that move the focus are priority bindings and use `Screen.set_focus` (which is
immediate, unlike `Widget.focus`), so the keys after them reach the new field.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    """An Input whose own key bindings run in the order keys arrive."""

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

    BINDINGS = [("tab", "complete", "Complete path")]

    def action_complete(self) -> None:
        completed = complete_path(self.value[: self.cursor_position]) if self.cursor_position == len(self.value) \
            else None
        if completed is None:
            self.screen.focus_next()
            return
        self.value = completed
        self.cursor_position = len(completed)
