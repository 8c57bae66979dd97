"""Frozen parameter dataclasses <-> Hydra's config schema: each group is defined once, as the dataclass the
code uses; the (mutable) structured-config schema Hydra type-checks YAML against is derived from it, and a
composed config node is read back into the dataclass by field name."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from bertc.errors import ConfigError

DERIVED = "derived"  # field metadata: the plan fills it (from other groups); it is not a config key
CHOICES = "choices"  # field metadata: the values a config key may take
RANGE = "range"  # field metadata: the Range a config key's value (each item of a list) must be in


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number, string or list key accepts, declared once on its field (`bounded`) and checked where
    the value enters: on the command line before Hydra (`check_override`) and when the config becomes a plan."""

    low: float | None = None
    high: float | None = None
    above: bool = False  # low itself is excluded (a positive number of seconds)
    filled: bool = False  # a string must not be empty, a list must hold at least one item
    note: str = ""  # what a special value means, for the message ("0: TensorFlow's choice")
    item: str = "item"  # what one item of a list is called in the message ("size")

    def admits(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return (bool(value) or not self.filled) and all(self.admits(item) for item in value)
        if isinstance(value, str):
            return bool(value.strip()) or not self.filled
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN: no range
            return False
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        return low_ok and (self.high is None or value <= self.high)

    def describe(self, kind: Any) -> str:
        what = {int: "an integer", float: "a number", str: "a non-empty string"}.get(kind, "a value")
        if self.low == 0 and self.above:
            what = f"a positive {what.split()[-1]}" + (f" up to {_number(self.high)}" if self.high is not None else "")
        elif self.low is not None and self.high is not None:
            what += f" from {_number(self.low)}{' (excluded)' if self.above else ''} to {_number(self.high)}"
        elif self.low is not None:
            what += f" {'above' if self.above else 'of at least'} {_number(self.low)}"
        return what + (f" ({self.note})" if self.note else "")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def bounded(default: Any, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A field whose value must be in [low, high] (Range's options: above, filled, note); null stays allowed
    where the type is optional, and a list's bound applies to each item."""
    return dataclasses.field(default=default, metadata={RANGE: Range(low, high, **options)})


@dataclasses.dataclass(frozen=True)
class Key:
    """A config key of a group that is not a parameter of its pass: a switch, a label for reports."""

    name: str
    type: Any
    default: Any
    choices: tuple = ()
    off: Any = None  # for a pass's switch: the value that turns the step off


def derived(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={DERIVED: True})


def choice(default: Any, choices: tuple | Mapping) -> Any:
    """A key that takes one of `choices`; a mapping (a registry) is kept live: what is registered later counts."""
    kept = choices if isinstance(choices, Mapping) else tuple(choices)
    return dataclasses.field(default=default, metadata={CHOICES: kept})


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(cls) if not field.metadata.get(DERIVED)]


@functools.cache
def schema_of(cls: type, extra: tuple[Key, ...] = (), name: str | None = None) -> type:
    """The structured-config schema of a frozen dataclass: same keys, types and defaults, mutable, tuples
    as lists of the element's own schema; `extra` keys first."""
    hints = typing.get_type_hints(cls)
    fields: list = [
        (
            key.name,
            key.type,
            dataclasses.field(default=key.default, metadata={CHOICES: key.choices} if key.choices else {}),
        )
        for key in extra
    ]
    for field in config_fields(cls):
        kind = _schema_type(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = field.default
            if isinstance(default, tuple):
                factory = functools.partial(_as_list, default)
                fields.append((field.name, kind, dataclasses.field(default_factory=factory, metadata=field.metadata)))
                continue
            fields.append((field.name, kind, dataclasses.field(default=default, metadata=field.metadata)))
        else:
            fields.append(
                (field.name, kind, dataclasses.field(default_factory=field.default_factory, metadata=field.metadata))
            )
    return dataclasses.make_dataclass(name or f"{cls.__name__}Schema", fields)


def _as_list(value: tuple) -> list:
    """A tuple default as a list, its dataclass items (instances, not classes) as instances of their schema."""
    return [
        schema_of(type(item))(**_plain(item)) if dataclasses.is_dataclass(item) and not isinstance(item, type) else item
        for item in value
    ]


def _plain(item: Any) -> dict:
    return {
        field.name: _as_list(value) if isinstance(value := getattr(item, field.name), tuple) else value
        for field in config_fields(type(item))
    }


def _schema_type(hint: Any) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return types.GenericAlias(list, (_schema_type(arguments[0]),))  # list[...] of a type computed here
    if origin in (typing.Union, types.UnionType):
        inner = [argument for argument in arguments if argument is not type(None)]
        return typing.Optional[_schema_type(inner[0])]  # noqa: UP045 (OmegaConf reads typing.Optional)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return schema_of(hint)
    return hint


def from_config(cls: type, node: Any, group: str, **derived_values: Any) -> Any:
    """A composed config node (DictConfig or schema instance) -> `cls`, by field name; choices checked."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in config_fields(cls):
        # an entry of a list of dataclasses is named for the list: precision.rules -> "precision rule dtype"
        value = _value(hints[field.name], _get(node, field.name), f"{group} {field.name.removesuffix('s')} ")
        key = f"{group}{field.name}" if group.endswith(" ") else f"{group}.{field.name}"
        if field.metadata.get(CHOICES):
            check_choice(value, field.metadata[CHOICES], key)
        if field.metadata.get(RANGE) and value is not None:
            check_range(value, field.metadata[RANGE], key, _scalar(hints[field.name]))
        values[field.name] = value
    return cls(**values, **derived_values)


def _get(node: Any, key: str) -> Any:
    return node[key] if isinstance(node, Mapping) else getattr(node, key)


def _value(hint: Any, value: Any, group: str) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and value is not None:
        return tuple(_value(arguments[0], item, group) for item in value)
    if origin is dict and value is not None:
        return {key: item for key, item in value.items()}
    if origin in (typing.Union, types.UnionType):
        inner = [argument for argument in arguments if argument is not type(None)]
        return None if value is None else _value(inner[0], value, group)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        return from_config(hint, value, group)
    return value


def check_choice(value: Any, choices: tuple, key: str) -> Any:
    if value not in choices:
        names = ", ".join("null" if choice is None else str(choice) for choice in choices)
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {names}.")
    return value


def check_range(value: Any, bounds: Range, key: str, kind: Any) -> Any:
    if bounds.admits(value):
        return value
    if isinstance(value, (list, tuple)) and not value:
        raise ConfigError(f"{key}=[] needs at least one {bounds.item}, each {bounds.describe(kind)}.")
    each = f"each {bounds.item} is" if isinstance(value, (list, tuple)) else "allowed is"
    raise ConfigError(f"{key}={_shown(value)} is out of range: {each} {bounds.describe(kind)}.")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_shown(item) for item in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _scalar(hint: Any) -> Any:
    """The type of one value of a key: int for `int`, `int | None` and `tuple[int, ...]`."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple or origin in (typing.Union, types.UnionType):
        return _scalar(next(argument for argument in arguments if argument is not type(None)))
    return hint


# ---- a value on the command line, before Hydra ----------------------------------------------------------
# Hydra's own message for a wrong type ("Value 'maybe' could not be converted to Boolean ... HYDRA_FULL_ERROR")
# names the schema class and not the allowed values: bertc answers first, in one line.

# what OmegaConf converts to a boolean (BooleanNode), so that nothing Hydra accepts is refused here
_BOOLEANS = {"true": True, "yes": True, "y": True, "on": True, "1": True}
_BOOLEANS.update({"false": False, "no": False, "n": False, "off": False, "0": False})


def check_override(field: dataclasses.Field, hint: Any, key: str, text: str) -> str | None:
    """A problem with `key=text` for a schema field (its type, its Range), or None. Values Hydra computes
    (interpolations, sweeps, functions) and lists are left to Hydra and to the plan's check."""
    if dataclasses.is_dataclass(hint):
        return None
    collection = _without_none(hint)
    if typing.get_origin(collection) in (list, tuple, dict):
        return _not_a_collection(collection, key, text.strip())
    text, kind = text.strip(), _scalar(hint)
    if not text:
        return _empty(field, key, kind)
    if text.startswith(("[", "{")) and kind in (bool, int, float, str):
        return f"{key}={text} is a {'list' if text[0] == '[' else 'mapping'}: allowed is {_kind_name(kind)}."
    if text.startswith(("${", "[", "{")) or "," in text or "(" in text:
        return None
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if text.lower() == "null":
        return None if optional else f"{key}=null is not allowed: give {_kind_name(kind)}."
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    value: Any = text
    try:
        if kind is bool:
            value = _BOOLEANS[text.lower()]
        elif kind is int:
            value = int(text)
        elif kind is float:
            value = float(text)
    except (KeyError, ValueError):
        bounds = field.metadata.get(RANGE)
        noun = {bool: "bool", int: "integer", float: "number"}[kind]
        allowed = bounds.describe(kind) if bounds else _kind_name(kind)
        return f"{key}={text!r} is not a valid {noun}: allowed is {allowed}."
    try:
        if field.metadata.get(CHOICES):
            check_choice(value, field.metadata[CHOICES], key)
        if field.metadata.get(RANGE):
            check_range(value, field.metadata[RANGE], key, kind)
    except ConfigError as error:
        return str(error)
    return None


def _without_none(hint: Any) -> Any:
    """`X` for `X | None`; the hint itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        return arguments[0] if len(arguments) == 1 else hint
    return hint


def _not_a_collection(hint: Any, key: str, text: str) -> str | None:
    """A plain value where a list or a mapping goes (Hydra's own message is a multi-line schema dump)."""
    if not text or text.startswith(("${", "[", "{")) or "," in text or "(" in text or text.lower() == "null":
        return None  # interpolations, sweeps and functions: Hydra resolves them; the plan checks the result
    if typing.get_origin(hint) is dict:
        return f"{key}={text} is not a mapping: set one entry with {key}.NAME=VALUE, or give {{NAME: VALUE, ...}}."
    return f"{key}={text} is not a list: give [{text}] or [a, b, ...]."


def _empty(field: dataclasses.Field, key: str, kind: Any) -> str | None:
    """`key=` gives Hydra an empty string: a problem for a number, a switch and a string that must be filled."""
    bounds = field.metadata.get(RANGE)
    if kind is str and not (bounds is not None and bounds.filled):
        return None
    allowed = bounds.describe(kind) if bounds is not None else _kind_name(kind)
    return f"{key}= is empty: allowed is {allowed}; leave the key out for its default."


# what a value of each scalar type is called in a message (bertc/runtime/records.py adds its JSON kinds)
KIND_NAMES: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _kind_name(kind: Any) -> str:
    return KIND_NAMES.get(kind, "a value")
