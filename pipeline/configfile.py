"""One configuration style for every stage: a frozen dataclass, checked where it is built, that
goes to TOML and back.

Each stage has one configuration object (simulate: :mod:`specdenoise.config`; train:
:class:`specdenoise.train.config.TrainConfig`; evaluate:
:class:`specdenoise.stage_evaluate.EvaluateConfig`; run: :class:`specdenoise.stage_run.RunConfig`).
Its command takes ``--config FILE`` (a TOML table of the object's fields; options given on the
command line win over the file) and ``--print-config`` (the effective object as TOML, which
``--config`` reads back to an equal object). This module holds what they share: the TOML
writer (Python reads TOML with :mod:`tomllib`; nothing in the standard library writes it), the
reading of a config file with one-line errors, and the field checks of a dataclass.

TOML has no null: a field holding None is left out of the text, so a field that may be None
defaults to None (a dataclass says what None means, e.g. ``template_n``'s "all").
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path

from specdenoise.errors import SpecdenoiseError

# ---------------------------------------------------------------------------------- writing


def _bare_key(key: str) -> str:
    ok = key and all(c.isalnum() or c in "_-" for c in key) and key.isascii()
    return key if ok else json.dumps(key)


def _value(v, where: str) -> str:
    """One TOML value (inline form)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)  # shortest text that reads back to the same float
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a JSON string is a TOML basic string
    if isinstance(v, list | tuple):
        if any(x is None for x in v):
            raise ValueError(f"{where}: TOML has no null, and a list cannot leave one out")
        return "[" + ", ".join(_value(x, where) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_bare_key(k)} = {_value(x, f'{where}.{k}')}"
                               for k, x in v.items() if x is not None) + "}"
    raise ValueError(f"{where}: cannot write {type(v).__name__} {v!r} as TOML")


def _is_table_list(v) -> bool:
    return isinstance(v, list | tuple) and bool(v) and all(isinstance(x, Mapping) for x in v)


def dumps(table: Mapping, comments: Mapping[str, str] | None = None) -> str:
    """``table`` as TOML text that :func:`tomllib.loads` reads back to equal values.

    Plain values come first; then each mapping as a ``[name]`` table (its own mappings inline)
    and each non-empty list of mappings as ``[[name]]`` tables. None values are left out.
    ``comments``: a comment line to put above a table, by its name.
    """
    comments = comments or {}
    lines = [f"{_bare_key(k)} = {_value(v, k)}" for k, v in table.items()
             if v is not None and not isinstance(v, Mapping) and not _is_table_list(v)]

    def section(header: str, name: str, body: Mapping) -> None:
        lines.append("")
        if name in comments:
            lines.append(f"# {comments[name]}")
        lines.append(header)
        lines.extend(f"{_bare_key(k)} = {_value(v, f'{name}.{k}')}" for k, v in body.items()
                     if v is not None)

    for k, v in table.items():
        if isinstance(v, Mapping):
            section(f"[{_bare_key(k)}]", k, v)
        elif _is_table_list(v):
            for item in v:
                section(f"[[{_bare_key(k)}]]", k, item)
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------------------------------------- reading


def read(path: str | Path, what: str = "config file") -> dict:
    """The TOML table in ``path``; a missing file or bad TOML is one line."""
    from specdenoise.stores import read_text

    text = read_text(path, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecdenoiseError(f"{what} {path} is not valid TOML: {exc}") from None


def check_keys(table: Mapping, known: Iterable[str], where: str) -> None:
    """One line naming the first key of ``table`` that is not in ``known``."""
    known = tuple(known)
    for key in table:
        if key not in known:
            raise SpecdenoiseError(f"{where}: unknown option '{key}'; known: {', '.join(known)}")


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def build(cls, table: Mapping, where: str):
    """The dataclass ``cls`` from a TOML table: unknown or missing keys are one line, values
    as :func:`coerce` makes them; the class checks the rest where it is built."""
    check_keys(table, field_names(cls), where)
    for f in dataclasses.fields(cls):
        required = (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING)
        if required and f.name not in table:
            raise SpecdenoiseError(f"{where}: '{f.name}' is missing")
    return cls(**coerce(cls, table))


def overlay(*layers: Mapping) -> dict:
    """Later layers win; a None value in a layer keeps the earlier one (an option not given)."""
    out: dict = {}
    for layer in layers:
        out.update({k: v for k, v in layer.items() if v is not None})
    return out


# ---------------------------------------------------------------------------------- checking


def _matches(value, hint) -> bool:
    """Whether ``value`` is of the (simple) annotated type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is typing.Any:
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, tuple) and all(_matches(x, args[0]) for x in value)
    if origin in (dict, list):
        return isinstance(value, origin)
    return isinstance(value, hint)


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "a table"}


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h is not type(None))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0]).split(' ', 1)[1]}s"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(obj, what: str) -> None:
    """One line for the first field of the dataclass ``obj`` whose value has the wrong type
    (a TOML file can hold any value where a number is meant)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise SpecdenoiseError(f"{what} '{f.name}' must be {_describe(hints[f.name])}, got "
                                   f"{value!r}")


def coerce(cls, values: Mapping) -> dict:
    """``values`` for the fields of ``cls`` as the dataclass holds them: TOML lists as tuples
    where the field is a tuple, integers as floats where it is a float (``lr = 1``)."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for name, value in values.items():
        hint = hints.get(name)
        kinds = (typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType,
                                                                      typing.Union) else (hint,))
        if isinstance(value, list) and any(typing.get_origin(h) is tuple for h in kinds):
            out[name] = tuple(value)
        elif (float in kinds and int not in kinds and isinstance(value, int)
              and not isinstance(value, bool)):
            out[name] = float(value)
    return out
