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


def choice(default: Any, choices: tuple) -> Any:
    return dataclasses.field(default=default, metadata={CHOICES: tuple(choices)})


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(cls) if not field.metadata.get(DERIVED)]


@functools.cache
def schema_of(cls: type, extra: tuple[Key, ...] = (), name: str | None = None) -> type:
    """The structured-config schema of a frozen dataclass: same keys, types and defaults, mutable, tuples
    as lists of the element's own schema; `extra` keys first."""
    hints = typing.get_type_hints(cls)
    fields: list = [(key.name, key.type, dataclasses.field(default=key.default)) for key in extra]
    for field in config_fields(cls):
        kind = _schema_type(hints[field.name])
        if field.default is not dataclasses.MISSING:
            default = field.default
            if isinstance(default, tuple):
                fields.append(
                    (field.name, kind, dataclasses.field(default_factory=functools.partial(_as_list, default)))
                )
                continue
            fields.append((field.name, kind, dataclasses.field(default=default)))
        else:
            fields.append((field.name, kind, dataclasses.field(default_factory=field.default_factory)))
    return dataclasses.make_dataclass(name or f"{cls.__name__}Schema", fields)


def _as_list(value: tuple) -> list:
    return [schema_of(type(item))(**_plain(item)) if dataclasses.is_dataclass(item) else item for item in value]


def _plain(item: Any) -> dict:
    return {
        field.name: _as_list(value) if isinstance(value := getattr(item, field.name), tuple) else value
        for field in config_fields(type(item))
    }


def _schema_type(hint: Any) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return list[_schema_type(arguments[0])]
    if origin in (typing.Union, types.UnionType):
        inner = [argument for argument in arguments if argument is not type(None)]
        return typing.Optional[_schema_type(inner[0])]  # noqa: UP045 (OmegaConf reads typing.Optional)
    if dataclasses.is_dataclass(hint):
        return schema_of(hint)
    return hint


def from_config(cls: type, node: Any, group: str, **derived_values: Any) -> Any:
    """A composed config node (DictConfig or schema instance) -> `cls`, by field name; choices checked."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in config_fields(cls):
        # an entry of a list of dataclasses is named for the list: precision.rules -> "precision rule dtype"
        value = _value(hints[field.name], _get(node, field.name), f"{group} {field.name.removesuffix('s')} ")
        if field.metadata.get(CHOICES):
            check_choice(
                value,
                field.metadata[CHOICES],
                f"{group}{field.name}" if group.endswith(" ") else f"{group}.{field.name}",
            )
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
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        return from_config(hint, value, group)
    return value


def check_choice(value: Any, choices: tuple, key: str) -> Any:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}.")
    return value
