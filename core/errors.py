"""The one exception type that carries a message meant for the user (shown without a traceback)."""


class TiwizError(Exception):
    """A problem the user can act on. `str(err)` is the whole message."""
