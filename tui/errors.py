"""The one wording of an exception for the wizard's user: what went wrong, never a Python class name or a
traceback."""

from __future__ import annotations

from core.errors import TiwizError


def error_text(error: BaseException | None) -> str:
    """A user-facing sentence for an exception: TiwizError as it is; file errors with the file; anything else by its
    message alone (a class name such as "ValueError" means nothing to a user)."""
    if error is None:
        return "Something went wrong."
    if isinstance(error, TiwizError):
        return str(error)
    if isinstance(error, FileNotFoundError):
        return f"File not found: {error.filename or error}"
    if isinstance(error, PermissionError):
        return f"Permission denied: {error.filename or error}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    if isinstance(error, MemoryError):
        return "Out of memory."
    text = str(error).strip()
    if isinstance(error, KeyError) and text:
        text = f"missing {text}"
    return text[0].upper() + text[1:] if text else "Something went wrong (an internal error with no message)."
