"""Frozen dataclasses <-> JSON objects: a record is written from its dataclass (the fields' order is the keys'
order) and read back with every field's type and range checked, a bad value named by its path
(`manifest.modules[2].batch_size: expected an integer from 1 to 1048576, got "8"`).

NumPy-free and TensorFlow-free: the portable runtime reads its manifest with it, bertc/run its reports.
Keys a record does not declare are ignored when read (a newer writer may add some); a field declared
with `omitted=True` is left out of the JSON when it is None, and may be absent when read.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from bertc.schema import KIND_NAMES, Range

OMITTED = "omitted"  # field metadata: no key when the value is None (a section that did not apply)
BOUNDS = "bounds"  # field metadata: the Range a number (each number of a list) must be in
CHOICES = "choices"  # field metadata: the values a string may take

Record = TypeVar("Record")


class RecordError(ValueError):
    """A JSON value that is not the record it should be; the message names the field."""


def field(
    default: Any = dataclasses.MISSING,
    *,
    omitted: bool = False,
    choices: tuple = (),
    low: float | None = None,
    high: float | None = None,
    **bounds: Any,
) -> Any:
    """A record's field: `omitted` (no key when None), `choices` (a string's values), low/high (Range's bounds)."""
    metadata: dict[str, Any] = {OMITTED: omitted}
    if choices:
        metadata[CHOICES] = choices
    if low is not None or high is not None or bounds:
        metadata[BOUNDS] = Range(low, high, **bounds)
    if omitted and default is dataclasses.MISSING:
        default = None
    return dataclasses.field(default=default, metadata=metadata)


def to_json(value: Any) -> Any:
    """A record (and the records, lists and dicts inside it) -> plain JSON values, keys in the fields' order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: to_json(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.metadata.get(OMITTED) and getattr(value, item.name) is None)
        }
    if isinstance(value, Mapping):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(cls: type[Record], value: Any, where: str) -> Record:
    """A parsed JSON value -> the record `cls`, every field checked; RecordError naming `where`.field otherwise."""
    if not isinstance(value, Mapping):
        raise RecordError(f"{where}: expected an object, got {_shown(value)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{where}.{item.name}"
        if item.name not in value:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise RecordError(f"{path}: missing")
            continue
        values[item.name] = _value(hints[item.name], value[item.name], path, item.metadata)
    return cls(**values)


def _value(hint: Any, value: Any, path: str, metadata: Mapping) -> Any:
    """One JSON value checked against a type hint (and the field's choices and bounds)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        kinds = [kind for kind in arguments if kind is not type(None)]
        if len(kinds) == 1:
            return _value(kinds[0], value, path, metadata)
        for kind in kinds:
            try:
                return _value(kind, value, path, metadata)
            except RecordError:
                continue
        raise RecordError(f"{path}: expected {' or '.join(map(_kind_name, kinds))}, got {_shown(value)}")
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{path}: expected a list, got {_shown(value)}")
        if not value and metadata.get(BOUNDS) is not None and metadata[BOUNDS].filled:
            raise RecordError(f"{path}: expected a non-empty list, got []")
        return [_value(arguments[0], item, f"{path}[{index}]", metadata) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise RecordError(f"{path}: expected an object, got {_shown(value)}")
        return {key: _value(arguments[1], item, f"{path}[{json.dumps(key)}]", metadata) for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, path)  # type: ignore[arg-type]
    return _scalar(hint, value, path, metadata)


def _scalar(hint: Any, value: Any, path: str, metadata: Mapping) -> Any:
    if hint is Any:
        return value
    if hint is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, hint)
    bounds, choices = metadata.get(BOUNDS), metadata.get(CHOICES)
    if not fits or (bounds is not None and not bounds.admits(value)) or (choices and value not in choices):
        if choices:
            expected = "one of " + ", ".join(map(json.dumps, choices))
        else:
            expected = bounds.describe(hint) if bounds is not None else _kind_name(hint)
        raise RecordError(f"{path}: expected {expected}, got {_shown(value)}")
    return value


def _kind_name(kind: Any) -> str:
    if dataclasses.is_dataclass(kind) or kind is dict:
        return "an object"
    if kind is list or typing.get_origin(kind) is list:
        return "a list"
    return KIND_NAMES.get(kind, str(kind))


def _shown(value: Any) -> str:
    """A bad value as the message shows it: JSON, cut to 60 characters."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    text = {"dict": "an object", "list": "a list"}.get(text, text)
    return text if len(text) <= 60 else text[:57] + "..."
