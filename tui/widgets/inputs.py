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
