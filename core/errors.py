"""The one exception type that carries a message meant for the user (shown without a traceback)."""


class TiwizError(Exception):
    """A problem the user can act on. `str(err)` is the whole message."""


class FieldError(TiwizError):
    """A bad value for one option: `field` is its name (a TrainConfig or PreprocessOptions field), so forms can mark
    the input without parsing the message; `str(err)` is the whole message, as for any TiwizError."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def __reduce__(self):
        return (type(self), (self.field, self.message))
