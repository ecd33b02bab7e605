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


def pickle_refusal(exc: BaseException) -> str | None:
    """What a pickle refused by `torch.load(weights_only=True)` asked for ("it asks for os.system"), or None when
    `exc` is not such a refusal. Never passes on torch's advice to re-run with weights_only=False."""
    import re

    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        name = re.sub(r"^(posix|nt)\.", "os.", found.group(1))  # os.system pickles as posix.system
        return f"it asks for {name}"
    if "Weights only load failed" in text or "Unsupported operand" in text:
        found = re.search(r"Unsupported operand \S+", text)
        return found.group(0) if found else "it holds Python objects beyond plain tensors"
    return None


def without_torch_advice(text: str) -> str:
    """`text` without the sentences of torch's weights_only advice (re-running with weights_only=False)."""
    import re

    sentences = re.split(r"(?<=[.!?])\s+", str(text))
    kept = [s for s in sentences if "weights_only" not in s and "Re-running" not in s and "trusted source" not in s]
    return " ".join(kept).strip()
