"""The rewrite steps: every module here declares one `Pass` (its config group, parameter schema, what it
requires of the graph and ensures after it, and which passes must run before it) and returns a `PassResult`;
the registry finds them and puts them in their canonical order. Adding a pass is its module, its YAML options,
its tests."""

from __future__ import annotations

import dataclasses
import graphlib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bertc.schema import Key

if TYPE_CHECKING:
    from bertc.ir.graph import Graph

# A config entry ending in this may match nothing (removal's shipped "Assert?", "ReshapeChain?").
OPTIONAL_ENTRY = "?"


@dataclasses.dataclass(frozen=True)
class Condition:
    """A property of a graph: `check(graph, params)` returns None when it holds, else what is wrong."""

    description: str
    check: Callable[[Any, Any], str | None]


@dataclasses.dataclass(frozen=True)
class PassResult:
    """What a pass returns: the new graph and, per config entry (op, rule, boundary), its match count."""

    graph: Graph
    matches: Mapping[str, int] = dataclasses.field(default_factory=dict)
    details: Mapping = dataclasses.field(default_factory=dict)  # what the report should say of the step

    def unmatched(self) -> list[str]:
        """The entries that matched nothing, but those marked OPTIONAL_ENTRY (the runner makes them an error)."""
        return [entry for entry, count in self.matches.items() if count == 0 and not entry.endswith(OPTIONAL_ENTRY)]


@dataclasses.dataclass(frozen=True)
class Pass:
    run: Callable[[Any, Any], Any]  # (Graph, params) -> PassResult, never mutating its input; named verb_object
    group: str  # its config group: conf/<group>/*.yaml
    params: type  # frozen dataclass of the pass's parameters; the group's config schema is derived from it
    help: str = ""  # one line for `bertc --help`: what the step does
    switch: Key | None = None  # the group's on/off key: the step runs unless the key holds `switch.off`
    enabled: Callable[[Any], bool] | None = None  # or: (the group's config node) -> whether the step runs
    keys: tuple[Key, ...] = ()  # further keys of the group that are not parameters (labels)
    after: tuple[str, ...] = ()  # passes that must run first; say why with a NOTE at the declaration
    before: tuple[str, ...] = ()  # passes that must run later (the same constraint, declared from this side)
    requires: tuple[Condition, ...] = ()  # of the input graph: a failure is the user's graph not fitting
    ensures: tuple[Condition, ...] = ()  # of the output graph: a failure is a bertc bug
    derive: Callable[[Mapping[str, Any]], dict] = lambda facts: {}  # derived parameters from plan facts
    # what the plan and the targets know of the group (Plan.facts, by name; e.g. keep_signature, quantize):
    # (params, or None when the step does not run; the group's config node, for its labels) -> {name: value}.
    # NOTE: every group is asked, those whose step does not run too: a fact has a value either way.
    facts: Callable[[Any, Any], dict] = lambda params, node: {}
    describe: Callable[[Any], list[str]] | None = None  # params -> the step's line in the plan, then lines below it

    @property
    def name(self) -> str:
        """The function's name: the module, the function, the step and the registry key say the same."""
        return self.run.__name__

    @property
    def config_keys(self) -> tuple[Key, ...]:
        return ((self.switch,) if self.switch else ()) + self.keys

    def runs(self, node: Any) -> bool:
        """Whether the step runs, from the group's config node."""
        if self.switch is not None:
            return node[self.switch.name] != self.switch.off
        return bool(self.enabled(node)) if self.enabled else True


_REGISTERED: dict[str, Pass] = {}
_DISCOVERED: list[bool] = []


def register(spec: Pass) -> Pass:
    """Add a pass (the modules here and in subpackages are found on their own; a plugin or a test calls this)."""
    clash = next(
        (other for other in _REGISTERED.values() if other.group == spec.group and other.name != spec.name), None
    )
    if clash is not None:
        raise ValueError(f"pass {spec.name}: config group {spec.group!r} already belongs to {clash.name}")
    _REGISTERED[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def _discover() -> None:
    """Register the PASS of every module here and of the modules a feature package below names in its `PASSES`
    (passes/length/: its other modules are read by the targets, not the registry), in the order of the modules' own
    names, wherever they sit (that order breaks ties in `passes`)."""
    _DISCOVERED.append(True)
    names = []
    for module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        if not module.ispkg:
            names.append(module.name)
            continue
        names += [f"{module.name}.{name}" for name in getattr(importlib.import_module(module.name), "PASSES", ())]
    for name in sorted(names, key=lambda name: name.split(".")[-1]):
        loaded = importlib.import_module(name)
        spec = getattr(loaded, "PASS", None)
        if isinstance(spec, Pass) and spec.name not in _REGISTERED:
            register(spec)


def passes() -> tuple[Pass, ...]:
    """Every pass, in the canonical order: each after the passes it names in `after` (and before those in
    `before`); ties by discovery order."""
    if not _DISCOVERED:
        _discover()
    known = list(_REGISTERED)
    named = {name for spec in _REGISTERED.values() for name in spec.after + spec.before}
    unknown = sorted(named - set(known))
    if unknown:
        raise ValueError(f"passes name unknown passes in `after` or `before`: {unknown}; registered: {known}")
    predecessors = {name: set(_REGISTERED[name].after) for name in known}
    for name in known:
        for later in _REGISTERED[name].before:
            predecessors[later].add(name)
    sorter = graphlib.TopologicalSorter(predecessors)
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=known.index)
        order.extend(ready)
        sorter.done(*ready)
    return tuple(_REGISTERED[name] for name in order)


def get(name: str) -> Pass:
    by_name = {spec.name: spec for spec in passes()}
    if name not in by_name:
        raise KeyError(f"unknown pass {name!r}; passes: {', '.join(by_name)}")
    return by_name[name]
