"""The one convention for option dataclasses (`TrainConfig`, `PreprocessOptions`, and any later one): what each
field means and allows is data, and every front end (the CLI flags, the wizard's forms, the generated reference,
validation) reads that data through `field_specs`.

Declaring a field (additive: a new option touches only its own lines):
- the type is the default's type: bool, int, float or str;
- `help` (one line, required), and optionally `choices` (allowed values), `min`/`max` (inclusive bounds for
  numbers), `multiple_of` (an int), `cli` (the flag; default `--field-name`), either in the dataclass field's
  `metadata` (`PreprocessOptions` does this) or in the module's tables keyed by field name (`TrainConfig`'s
  `HELP`, `CHOICES` and `BOUNDS`);
- rules that involve several fields stay in the class's `validate()`, and raise `FieldError` naming the field the
  user should change.

Every problem with a value is a `FieldError(field, message)` (a `TiwizError`): `exc.field` says which field, so a
form marks the right input without parsing the message text.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any

from core.errors import FieldError

__all__ = ["FieldError", "FieldSpec", "field_specs"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    cli: str = ""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def bounds_text(self) -> str:
        """"1-75", ">= 0", "<= 1" or "" (for help lines and form hints)."""
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)}-{_num(self.max)}"
        if self.min is not None:
            return f">= {_num(self.min)}"
        if self.max is not None:
            return f"<= {_num(self.max)}"
        return ""

    def coerce(self, value):
        """`value` (a form's text, a TOML or JSON value) as this field's type; FieldError when it cannot be."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            raise FieldError(self.name, f"{self.name}: must be true or false (got {value!r})")
        if self.type is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())
                except ValueError:
                    pass
            raise FieldError(self.name, f"{self.name}: must be a whole number (got {value!r})")
        if self.type is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value.strip())
                except ValueError:
                    pass
            raise FieldError(self.name, f"{self.name}: must be a number (got {value!r})")
        if not isinstance(value, str):
            raise FieldError(self.name, f"{self.name}: must be a string (got {value!r})")
        return value

    def check(self, value) -> None:
        """Raise FieldError when `value` breaks this field's choices, bounds or multiple."""
        if self.choices is not None and value not in self.choices:
            raise FieldError(self.name, f"{self.name}: must be one of {', '.join(map(str, self.choices))} "
                                        f"(got {value!r})")
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                kind = "a whole number" if self.type is int else "a number"
                raise FieldError(self.name, f"{self.name}: must be {kind} (got {value!r})")
            if self.type is int and not float(value).is_integer():
                raise FieldError(self.name, f"{self.name}: must be a whole number (got {value!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise FieldError(self.name, f"{self.name}: must be a finite number (got {value})")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise FieldError(self.name, f"{self.name}: must be {self._range_words()} (got {value})")
            if self.multiple_of and value % self.multiple_of:
                raise FieldError(self.name, f"{self.name}: must be a multiple of {self.multiple_of} (got {value})")

    def _range_words(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {_num(self.min)} and {_num(self.max)}"
        return f">= {_num(self.min)}" if self.min is not None else f"<= {_num(self.max)}"


_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def field_specs(cls, *, help: dict | None = None, choices: dict | None = None, bounds: dict | None = None
                ) -> list[FieldSpec]:
    """One FieldSpec per field of the dataclass `cls`, in declaration order, from each field's metadata and then
    the given tables (`bounds` maps a name to `(min, max)`, either may be None)."""
    out = []
    for f in fields(cls):
        meta = dict(f.metadata)
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        lo, hi = (bounds or {}).get(f.name, (meta.get("min"), meta.get("max")))
        spec_choices = meta.get("choices", (choices or {}).get(f.name))
        out.append(FieldSpec(
            name=f.name, type=type(default), default=default,
            help=meta.get("help", (help or {}).get(f.name, "")),
            choices=tuple(spec_choices) if spec_choices is not None else None,
            min=lo, max=hi, multiple_of=meta.get("multiple_of"),
            cli=meta.get("cli", "--" + f.name.replace("_", "-")),
        ))
    return out
