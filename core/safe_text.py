"""`safe_text(text)`: user-controlled text made harmless for a terminal.

File names, captions, event messages and error texts can hold control characters: `\\e]0;TITLE\\a` sets the
terminal's title, `\\e[2J` clears the screen, `\\r` overwrites a line, and bidi overrides reorder what is read.
Everything that prints such text to a terminal (the CLI, the wizard's messages) passes it through `safe_text`,
which writes each such character as a visible escape (`\\x1b`, `\\u202e`). Newlines and tabs are kept (newlines
can be escaped too, for one-line fields).
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    # \u escapes from DEL up: valid inside a JSON string too (raw C0 never reaches one: json.dumps escapes it)
    return f"\\x{code:02x}" if code < 0x7f else f"\\u{code:04x}"


def safe_text(text, *, keep_newlines: bool = True) -> str:
    """`text` (any object: str() is taken) with every terminal control character written as a visible escape."""
    text = text if isinstance(text, str) else str(text)
    return (_UNSAFE if keep_newlines else _UNSAFE_ONE_LINE).sub(_escape, text)


def safe_print(*values, sep: str = " ", end: str = "\n", file=None, flush: bool = False) -> None:
    """print() with every value passed through safe_text (what the CLI uses for anything it did not write itself)."""
    print(*(safe_text(v) for v in values), sep=sep, end=end, file=file, flush=flush)
