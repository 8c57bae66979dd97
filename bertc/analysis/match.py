"""Patterns as data -> the nodes of a Graph that match them: the small matcher the BERT analyses are written in.

A `Pattern` is one node: the op types it accepts (alternatives), patterns for its inputs by position,
and the name its match is recorded under. Each exporter's spelling of a structure is one more entry in
a list of named variants (as ONNX Runtime's `match_parent_paths` and tf2onnx's `OpTypePattern` do),
not another loop:

    SCORES = [
        Variant("scaled_scores", p("Mul|RealDiv", p(MATMUL_OPS, as_="matmul"), constant(), swap=True)),
        Variant("scores", p(MATMUL_OPS, as_="matmul")),
    ]
    found = first_match(index, node_name, SCORES, "attention scores")

Matching walks from a node to its producers. `skip` ops (layout, pass-through reads) are stepped over
before a node is tested; `swap` lets a binary op's two inputs come in either order; `when` adds a test
of its own (a constant, a tensor computed from one input alone). When no variant matches, the error
names the pattern, the variant that got furthest and the node where matching stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from bertc.ir.graph import Graph, GraphError, consumers, nodes_by_name, split_input
from bertc.ir.ops import CONSTANT_PRESERVING_OPS


@dataclasses.dataclass(frozen=True)
class Index:
    """A graph's nodes by name, their data consumers, and which nodes are constants: a Const, a weight, or a
    read, cast or reshape of constants only (Identity and ReadVariableOp before the removal step; keras-hub
    reshapes its LayerNorm parameters and 3-D kernels)."""

    nodes: dict
    users: dict
    constants: frozenset[str]

    @classmethod
    def of(cls, graph: Graph) -> Index:
        nodes = nodes_by_name(graph.graph_def)
        users = {
            name: [(user, position) for user, position in found if position >= 0]
            for name, found in consumers(graph.graph_def).items()
        }
        constants = set(graph.weights) | {name for name, node in nodes.items() if node.op == "Const"}
        changed = True
        while changed:  # to a fixpoint: graph order need not be topological
            changed = False
            for node in graph.graph_def.node:
                if node.name not in constants and node.op in CONSTANT_PRESERVING_OPS and _reads_only(node, constants):
                    constants.add(node.name)
                    changed = True
        return cls(nodes, users, frozenset(constants))

    def inputs(self, name: str) -> list[str]:
        return [split_input(source)[0] for source in self.nodes[name].input if not source.startswith("^")]

    def readers(self, name: str) -> list[str]:
        return [user.name for user, _ in self.users.get(name, ())]


def _reads_only(node, constants) -> bool:
    data = [split_input(name)[0] for name in node.input if not name.startswith("^")]
    return bool(data) and all(name in constants for name in data)


def weight_behind(index: Index, name: str) -> str:
    """Through reads, casts and reshapes of one constant (CONSTANT_PRESERVING_OPS) to the Const or weight."""
    while index.nodes[name].op in CONSTANT_PRESERVING_OPS and index.inputs(name):
        name = index.inputs(name)[0]
    return name


Test = Callable[[Index, str], bool]


@dataclasses.dataclass(frozen=True)
class Pattern:
    ops: frozenset[str]  # the op types accepted; empty: any
    inputs: tuple[Pattern | None, ...] = ()  # by input position; None or missing: anything
    name: str = ""  # the matched node is recorded under this name
    swap: bool = False  # a binary op whose two inputs may come in either order
    skip: tuple[str, ...] = ()  # ops stepped over (to their first input) before this node is tested
    when: Test | None = None
    describe: str = ""  # what `when` asks, for the error message


def p(
    ops: str | Sequence[str] = "",
    *inputs: Pattern | None,
    as_: str = "",
    swap: bool = False,
    skip: Sequence[str] = (),
    when: Test | None = None,
    describe: str = "",
) -> Pattern:
    """A pattern node: `ops` is 'A|B' or a group of bertc.ir.ops (alternatives), or '' (any op)."""
    alternatives = ops.split("|") if isinstance(ops, str) else ops
    return Pattern(frozenset(filter(None, alternatives)), tuple(inputs), as_, swap, tuple(skip), when, describe)


def constant(as_: str = "") -> Pattern:
    """A Const, a weight, or a pass-through read of one."""
    return p(as_=as_, when=lambda index, name: name in index.constants, describe="a constant or weight")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # the exporter spelling it stands for, e.g. "einsum attention (keras-hub, Model Garden)"
    pattern: Pattern


@dataclasses.dataclass(frozen=True)
class Match:
    variant: str
    nodes: dict[str, str]  # pattern name -> node name

    def __getitem__(self, key: str) -> str:
        return self.nodes[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.nodes.get(key, default)


@dataclasses.dataclass
class _Miss:
    depth: int = -1
    node: str = ""
    wanted: str = ""
    variant: str = ""


class PatternNotFound(GraphError):
    """No variant of a pattern matched; the message names the pattern and the node where matching stopped."""


def match(index: Index, name: str, pattern: Pattern, miss: _Miss | None = None, depth: int = 0) -> dict | None:
    """The captures of `pattern` matched at node `name` (after its skips), or None."""
    miss = miss if miss is not None else _Miss()
    name = _skip(index, name, pattern.skip)
    node = index.nodes.get(name)
    problem = _mismatch(index, name, node, pattern)
    if problem:
        if depth > miss.depth:
            miss.depth, miss.node, miss.wanted = depth, name, problem
        return None
    captured = {pattern.name: name} if pattern.name else {}
    operands = index.inputs(name)
    orders = [operands, operands[1::-1] + operands[2:]] if pattern.swap and len(operands) >= 2 else [operands]
    for order in orders:
        found = _match_inputs(index, order, pattern.inputs, miss, depth)
        if found is not None:
            return {**captured, **found}
    return None


def _skip(index: Index, name: str, skip: tuple[str, ...]) -> str:
    seen = 0
    while skip and name in index.nodes and index.nodes[name].op in skip and index.inputs(name) and seen < 32:
        name, seen = index.inputs(name)[0], seen + 1
    return name


def _mismatch(index: Index, name: str, node, pattern: Pattern) -> str:
    if node is None:
        return "a node (the input does not exist)"
    if pattern.ops and node.op not in pattern.ops:
        return " or ".join(sorted(pattern.ops))
    if pattern.when is not None and not pattern.when(index, name):
        return pattern.describe or "a node passing the pattern's test"
    if len(pattern.inputs) > len(index.inputs(name)):
        return f"{node.op} with at least {len(pattern.inputs)} inputs"
    return ""


def _match_inputs(index: Index, operands, patterns, miss: _Miss, depth: int) -> dict | None:
    captured: dict[str, str] = {}
    for operand, pattern in zip(operands, patterns):
        if pattern is None:
            continue
        found = match(index, operand, pattern, miss, depth + 1)
        if found is None:
            return None
        captured.update(found)
    return captured


def first_match(index: Index, name: str, variants: Sequence[Variant]) -> Match | None:
    """The first variant that matches at `name`, or None."""
    for variant in variants:
        found = match(index, name, variant.pattern)
        if found is not None:
            return Match(variant.name, found)
    return None


def require_match(index: Index, name: str, variants: Sequence[Variant], what: str) -> Match:
    """`first_match`, or a PatternNotFound naming `what`, the variants tried and where the best one stopped."""
    best = _Miss()
    for variant in variants:
        miss = _Miss()
        found = match(index, name, variant.pattern, miss)
        if found is not None:
            return Match(variant.name, found)
        if miss.depth > best.depth:
            best, best.variant = miss, variant.name
    stopped = index.nodes.get(best.node)
    raise PatternNotFound(
        f"pattern {what!r} not found at {name}: tried {', '.join(v.name for v in variants)}; the closest "
        f"({best.variant}) stopped at {best.node} ({stopped.op if stopped is not None else 'missing'}), "
        f"where it wanted {best.wanted}."
    )


def all_matches(index: Index, variants: Sequence[Variant], ops: Sequence[str] | None = None) -> list[tuple[str, Match]]:
    """(node, match) for every node (of one of `ops`, when given) where a variant matches, in graph order."""
    wanted = set(ops) if ops else None
    found = []
    for name, node in index.nodes.items():
        if wanted is None or node.op in wanted:
            hit = first_match(index, name, variants)
            if hit is not None:
                found.append((name, hit))
    return found
