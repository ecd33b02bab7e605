"""The machinery of the run folder's typed records: the events of `events.jsonl` (`core.runs.run_events`) and the
status of `status.json` (`core.runs.status`) are frozen dataclasses whose fields each have a type, a default and a
line of help. One set of rules for all of them:

- `to_json()`: the record's fields as a JSON object; fields whose value is None are left out, enums as their words;
- `parser(cls)(dict)`: the record back, generated once per class as straight-line code (replaying a 100k-step log
  is mostly this); a missing required field or a value of the wrong type raises `Bad` naming the field, an unknown
  field is ignored, and `fixes` map a field's older values (`bfloat16` -> `bf16`) before it is checked;
- `describe_fields(cls)`: name, type, default and help of each field, for the generated reference.

Supported field types: int, float, str, bool, a str Enum with a `parse` classmethod, `X | None` of those, and
`list[...]`/`dict[...]` (checked shallowly). Torch-free and Textual-free.
"""

from __future__ import annotations

import math
import time
import types
import typing
from dataclasses import MISSING, field, fields
from enum import Enum
from typing import Any, Callable


def help_field(text: str, default: Any = MISSING, factory: Any = MISSING):
    """A dataclass field with its line of help (the reference shows it)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": text})
    if default is MISSING:
        return field(metadata={"help": text})
    return field(default=default, metadata={"help": text})


def now() -> float:
    return round(time.time(), 3)


def record_json(record, out: dict | None = None) -> dict:
    """The JSON object of a record (after the keys already in `out`): None left out, enums as their words."""
    out = {} if out is None else out
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        out[f.name] = value
    return out


class Bad(Exception):
    """A field is missing or of the wrong type (the message says which; `field` names it)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class FieldSpec(typing.NamedTuple):
    name: str
    base: Any          # int, float, str, bool, list, dict or an Enum class
    optional: bool
    required: bool


_SPECS: dict[type, list[FieldSpec]] = {}


def specs(cls: type) -> list[FieldSpec]:
    found = _SPECS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = []
        for f in fields(cls):
            hint, optional = hints[f.name], False
            args = typing.get_args(hint)
            if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
                optional = True
                hint = next(a for a in args if a is not type(None))
            base = typing.get_origin(hint) or hint
            required = f.default is MISSING and f.default_factory is MISSING
            found.append(FieldSpec(f.name, base, optional, required))
        _SPECS[cls] = found
    return found


def coerce(spec: FieldSpec, value: Any) -> Any:
    """The value as the field's type; raises TypeError with a short reason when it is not that."""
    if value is None:
        if spec.optional:
            return None
        raise TypeError("null")
    base = spec.base
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    elif isinstance(base, type) and issubclass(base, Enum):
        parsed = base.parse(value) if hasattr(base, "parse") else None
        if parsed is not None and parsed is not getattr(base, "UNKNOWN", None):  # "unknown" is no value to write
            return parsed
    elif base in (list, dict):
        if isinstance(value, base):
            return value
    else:
        return value
    raise TypeError(f"{type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def type_word(spec: FieldSpec) -> str:
    base = spec.base
    word = {int: "an integer", float: "a number", str: "text", bool: "true/false", list: "a list",
            dict: "an object"}.get(base) or f"one of {', '.join(m.value for m in base)}"
    return word + (" or null" if spec.optional else "")


def _slow_field(spec: FieldSpec, value: Any, fix: Callable | None) -> Any:
    if value is _ABSENT:
        raise Bad(f"it has no {spec.name!r}", spec.name)
    if fix is not None and value is not None:
        value = fix(value)
    try:
        return coerce(spec, value)
    except TypeError as exc:
        raise Bad(f"{spec.name!r} is {exc}, not {type_word(spec)}", spec.name) from None


_ABSENT = object()
_PARSERS: dict[tuple, Any] = {}


def parser(cls: type, fixes: dict[str, Callable] | None = None, never_read: tuple[str, ...] = ()):
    """A function dict -> record for one class, generated once: one `get` and one exact-type test per field (the
    common case), the general check only for a value of another type. `fixes`: per field, a function mapping older
    values; `never_read`: fields always left at None (set by readers, never taken from a file)."""
    key = (cls, tuple(sorted((fixes or {}).items())), never_read)
    func = _PARSERS.get(key)
    if func is not None:
        return func
    fixes = fixes or {}
    env: dict[str, Any] = {"_ABSENT": _ABSENT, "_slow": _slow_field, "_cls": cls, "_new": object.__new__}
    body = ["def parse(data):", "    get = data.get"]
    names = []
    for i, (spec, exact, default) in enumerate(_table(cls, fixes)):
        env[f"_s{i}"], env[f"_d{i}"], env[f"_f{i}"] = spec, default, fixes.get(spec.name)
        var = f"v{i}"
        names.append((spec.name, "None" if spec.name in never_read else var))
        body.append(f"    {var} = get({spec.name!r}, _ABSENT)")
        tests = " or ".join(f"t is _t{i}_{j}" for j in range(len(exact)))
        for j, t in enumerate(exact):
            env[f"_t{i}_{j}"] = t
        if exact:
            body.append(f"    t = type({var})")
            body.append(f"    if not ({tests}):")
            indent = "        "
        else:
            indent = "    "
        if spec.required:
            body.append(f"{indent}{var} = _slow(_s{i}, {var}, _f{i})")
        else:
            call = f"_d{i}()" if callable(default) else f"_d{i}"
            body.append(f"{indent}{var} = {call} if {var} is _ABSENT else _slow(_s{i}, {var}, _f{i})")
    body.append("    record = _new(_cls)")
    body.append("    record.__dict__.update({" + ", ".join(f"{n!r}: {v}" for n, v in names) + "})")
    body.append("    return record")
    exec("\n".join(body), env)  # noqa: S102 - source built above from the dataclass fields only
    func = _PARSERS[key] = env["parse"]
    return func


def _table(cls: type, fixes: dict) -> list:
    """Per field: its spec, the Python types taken as they are, and its default (a factory is called)."""
    table = []
    for spec, f in zip(specs(cls), fields(cls)):
        exact = {int: (int,), float: (float,), str: (str,), bool: (bool,), list: (list,),
                 dict: (dict,)}.get(spec.base, ())
        if spec.optional:
            exact += (type(None),)
        if spec.name in fixes:
            exact = (type(None),) if spec.optional else ()
        default = f.default_factory if f.default is MISSING else f.default
        table.append((spec, exact, default))
    return table


def describe_fields(cls: type, skip: tuple[str, ...] = ()) -> list[dict]:
    """Each field of a record: {"name", "type", "required", "default", "help"} (for the generated reference)."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        if f.name in skip:
            continue
        default = None if f.default is MISSING else f.default
        if isinstance(default, Enum):
            default = default.value
        rows.append({"name": f.name, "type": hint_word(hints[f.name]), "required": f.default is MISSING
                     and f.default_factory is MISSING, "default": default, "help": f.metadata.get("help", "")})
    return rows


def hint_word(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(hint_word(a) for a in args)
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, Enum):
        return " | ".join(m.value for m in hint)
    return getattr(hint, "__name__", str(hint))
