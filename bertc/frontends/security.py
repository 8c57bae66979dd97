"""A SavedModel's meta graph -> the nodes TensorFlow would execute loading and serving it; refused if impure.

Checked before any part of an input model is executed (verify and bench load the user's folder with
`tf.saved_model.load`, the reference they compare against). The check covers what that loader runs
(`../shared/REFERENCE.md` section 10), not only the path from the serving inputs to the outputs:

- the saver's restore op (`saver_def.restore_op_name`) and everything it needs, up to the filename
  tensor TensorFlow feeds with `<model>/variables/variables`;
- the init op: the `__saved_model_init_op` signature, else the `saved_model_main_op` or
  `legacy_init_op` collection, and the default local init (the `table_initializer` collection and
  the initialisers of `local_variables`), up to the asset tensors TensorFlow feeds;
- the serving computation: everything `probabilities` needs, up to the signature's inputs;
- the body of every function any of these call (`PartitionedCall`, a function used as an op, any
  function-valued attribute), nested functions too.

Every op must be a pure tensor op (PURE_OPS, or named in `security.allow_ops`). The one exception is
the checkpoint machinery that restoring needs: `RestoreV2` (and the V1 `Restore`/`RestoreSlice`) only
in the restore op and only reading the fed filename tensor, and `Assign`/`AssignVariableOp` only in
the restore op and only storing a value that `RestoreV2` read. Saving ops (`SaveV2`,
`MergeV2Checkpoints`, ...) are never run by loading and are refused wherever they would execute.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from bertc.errors import ConfigError, ModelError, UserError
from bertc.ir.graph import Graph, GraphDef, NodeDef, ancestors, node_of, nodes_by_name, split_input, through_identity
from bertc.ir.ops import CALL_OPS

# Pure tensor ops: arithmetic, shapes, casts, control-free indexing and the ops of BERT exporters.
PURE_OPS = frozenset(
    """
    Abs Add AddN AddV2 All Any ArgMax ArgMin Assert BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd
    BroadcastArgs BroadcastTo Cast Ceil CheckNumerics ConcatV2 Const Cos Cumsum Einsum Elu Equal Erf Exp
    ExpandDims Fill Floor FloorDiv FloorMod FusedBatchNormV3 Gather GatherNd GatherV2 Greater
    GreaterEqual Identity IdentityN LeakyRelu Less LessEqual Log Log1p LogSoftmax LogicalAnd LogicalNot
    LogicalOr MatMul Max Maximum Mean Min Minimum Mod Mul Neg NoOp NotEqual OneHot Pack Pad PadV2
    Placeholder PlaceholderWithDefault Pow Prod Range Rank ReadVariableOp RealDiv Reciprocal Relu Relu6
    Reshape Round Rsqrt Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Size Slice Softmax Softplus
    Split SplitV Sqrt Square SquaredDifference Squeeze StopGradient StridedSlice Sub Sum Tanh Tile
    Transpose Unpack VarHandleOp VariableV2 Where ZerosLike OnesLike _FusedMatMul Erfinv Rint Sinh Cosh
    Erfc Expm1 Softsign Atan Tan Div DivNoNan Xlogy Xdivy IsFinite IsNan IsInf ClipByValue ReverseV2
    """.split()
)
RESTORE_READ_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
RESTORE_ASSIGN_OPS = frozenset({"Assign", "AssignVariableOp"})

INIT_OP_SIGNATURE = "__saved_model_init_op"
INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op")
ASSETS_COLLECTION = "saved_model_assets"
TABLE_INITIALIZERS = "table_initializer"
LOCAL_VARIABLES = "local_variables"


class UnsafeGraphError(UserError):
    pass


def check_allow_ops_known(allow_ops: Iterable[str]) -> None:
    """security.allow_ops names TensorFlow op types: an unknown name is a typo, not a grant."""
    from tensorflow.python.framework import op_def_registry

    unknown = sorted({op for op in allow_ops if op_def_registry.get(op) is None})
    if unknown:
        raise ConfigError(
            f"security.allow_ops names {unknown}, which TensorFlow does not know as op types (check the "
            "spelling: op types are CamelCase, e.g. ReadFile, PrintV2); remove or correct them."
        )


def refuse_unsafe_ops(graph: Graph, allow_ops: Iterable[str] = ()) -> None:
    """Every node of bertc's own graph (what the compiled model and its warm-up run) must be pure."""
    allowed = PURE_OPS | set(allow_ops)
    library = _functions(graph.graph_def)
    bad = []
    for node in graph.graph_def.node:
        bad += _node_problems(node, allowed, library, where=None)
    _refuse(bad, "the model's serving graph", allow_ops)


def refuse_unsafe_loading(
    meta_graph, serving_outputs: Iterable[str], serving_inputs: Iterable[str], allow_ops: Iterable[str] = ()
) -> dict[str, set[str]]:
    """Check what `tf.saved_model.load` plus the serving call would execute; returns purpose -> node names."""
    graph_def = meta_graph.graph_def
    nodes = nodes_by_name(graph_def)
    executed = loader_executed_nodes(meta_graph, serving_outputs, serving_inputs)
    allowed = PURE_OPS | set(allow_ops)
    library = _functions(graph_def)
    saver = meta_graph.saver_def if meta_graph.HasField("saver_def") else None
    filename = split_input(saver.filename_tensor_name)[0] if saver else None
    bad = []
    for purpose, names in executed.items():
        # An assignment refused only because what it stores was refused comes after the cause.
        for name in sorted(names, key=lambda name: (nodes[name].op in RESTORE_ASSIGN_OPS, name)):
            node = nodes[name]
            if purpose == "restore op" and _is_restore_machinery(node, nodes, filename):
                continue
            bad += _node_problems(node, allowed, library, where=purpose)
    _refuse(bad, "loading the model", allow_ops)
    return executed


def loader_executed_nodes(
    meta_graph, serving_outputs: Iterable[str], serving_inputs: Iterable[str]
) -> dict[str, set[str]]:
    """The nodes TensorFlow's TF1 loader (load_v1_in_v2) and the pruned serving call run, by purpose."""
    graph_def = meta_graph.graph_def
    nodes = nodes_by_name(graph_def)

    def node_named(reference: str, what: str) -> str:
        name = split_input(reference)[0]
        if name not in nodes:
            raise UnsafeGraphError(
                f"the model's {what} names {reference!r}, which is not a node of its graph; TensorFlow could "
                "not load it as it stands. Export the model again."
            )
        return name

    dangling = [
        (node.name, source) for node in graph_def.node for source in node.input if split_input(source)[0] not in nodes
    ]
    if dangling:
        raise UnsafeGraphError(
            f"the model's graph is broken: node {dangling[0][0]} takes input {dangling[0][1]!r}, which is "
            f"not a node of the graph ({len(dangling)} such input(s)); TensorFlow could not load it. Export "
            "the model again."
        )
    executed: dict[str, set[str]] = {}
    if meta_graph.HasField("saver_def"):
        saver = meta_graph.saver_def
        filename = node_named(saver.filename_tensor_name, "saver_def.filename_tensor_name")
        restore = node_named(saver.restore_op_name, "saver_def.restore_op_name")
        executed["restore op"] = ancestors(graph_def, [restore], stops=[filename]) - {filename}
    assets = _asset_nodes(meta_graph, nodes)
    for purpose, roots in _init_roots(meta_graph, node_named).items():
        executed[purpose] = ancestors(graph_def, roots, stops=assets) - assets
    inputs = {split_input(name)[0] for name in serving_inputs}
    roots = [node_named(name, "serving signature") for name in serving_outputs]
    executed["serving computation"] = ancestors(graph_def, roots, stops=inputs) - inputs
    return executed


def _init_roots(meta_graph, node_named: Callable[[str, str], str]) -> dict[str, list[str]]:
    """Purpose -> the nodes the loader runs to initialise: the init op (its signature, else its collection),
    the table initialisers and the local variables' initialisers."""
    init_roots: dict[str, list[str]] = {}
    if INIT_OP_SIGNATURE in meta_graph.signature_def:
        outputs = meta_graph.signature_def[INIT_OP_SIGNATURE].outputs
        init_roots["init op (__saved_model_init_op)"] = [
            node_named(info.name, "__saved_model_init_op signature") for info in outputs.values()
        ]
    for key in INIT_COLLECTIONS:
        if key in meta_graph.collection_def:
            names = meta_graph.collection_def[key].node_list.value
            init_roots[f"init op ({key} collection)"] = [node_named(name, f"{key} collection") for name in names]
    if TABLE_INITIALIZERS in meta_graph.collection_def:
        init_roots["table initialiser"] = [
            node_named(name, "table_initializer collection")
            for name in meta_graph.collection_def[TABLE_INITIALIZERS].node_list.value
        ]
    if LOCAL_VARIABLES in meta_graph.collection_def:
        from tensorflow.core.framework import variable_pb2

        initializers = []
        for data in meta_graph.collection_def[LOCAL_VARIABLES].bytes_list.value:
            variable = variable_pb2.VariableDef()
            variable.ParseFromString(data)
            if variable.initializer_name:
                initializers.append(node_named(variable.initializer_name, "local variable initialiser"))
        init_roots["local variable initialiser"] = initializers
    return init_roots


def loader_fed_nodes(meta_graph) -> set[str]:
    """The nodes TensorFlow's loader feeds (the checkpoint filename, asset paths): not executed."""
    nodes = nodes_by_name(meta_graph.graph_def)
    fed = _asset_nodes(meta_graph, nodes)
    if meta_graph.HasField("saver_def"):
        fed.add(split_input(meta_graph.saver_def.filename_tensor_name)[0])
    return fed


def _asset_nodes(meta_graph, nodes: Mapping[str, NodeDef]) -> set[str]:
    """The tensors the loader feeds with asset paths: they are not computed, so not executed."""
    names = [asset.tensor_info.name for asset in meta_graph.asset_file_def]
    if not names and ASSETS_COLLECTION in meta_graph.collection_def:
        from tensorflow.core.protobuf import meta_graph_pb2

        for packed in meta_graph.collection_def[ASSETS_COLLECTION].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            packed.Unpack(asset)
            names.append(asset.tensor_info.name)
    return {split_input(name)[0] for name in names if split_input(name)[0] in nodes}


def _is_restore_machinery(node: NodeDef, nodes: Mapping[str, NodeDef], filename: str | None) -> bool:
    """RestoreV2 reading the fed filename, or an assignment of what RestoreV2 read: what restoring needs."""
    if node.op in RESTORE_READ_OPS:
        return bool(node.input) and split_input(node.input[0])[0] == filename
    if node.op in RESTORE_ASSIGN_OPS and len(node.input) >= 2:
        # the restore reads through Identity only (loader_executed_nodes refused a graph with a dangling input)
        source = through_identity(nodes, node_of(node.input[1]), ("Identity",))
        target = through_identity(nodes, node_of(node.input[0]), ("Identity",))
        return (
            source.op in RESTORE_READ_OPS
            and _is_restore_machinery(source, nodes, filename)
            and target.op in ("VariableV2", "VarHandleOp")
        )
    return False


def _functions(graph_def: GraphDef) -> dict:
    return {function.signature.name: function for function in graph_def.library.function}


def _called_functions(node: NodeDef, library: Mapping) -> list[str]:
    """Library functions a node runs: its op itself, or any function-valued attribute (f, body, branches)."""
    called = [node.op] if node.op in library else []
    for value in node.attr.values():
        if value.HasField("func"):
            called.append(value.func.name)
        called += [function.name for function in value.list.func]
    return called


def _node_problems(
    node: NodeDef,
    allowed: frozenset | set,
    library: Mapping,
    where: str | None,
    via: tuple[str, ...] = (),
    caller: str | None = None,
) -> list[str]:
    """One line per impure op in `node` or in a function it calls (naming the functions and the caller)."""
    called = _called_functions(node, library)
    chain = "".join(f" in function {name}" for name in reversed(via))
    chain += f", called by node {caller}" if caller else ""
    context = f", in the {where}" if where else ""  # no square brackets: the console reads them as markup
    problems = []
    # a call, or a function used as an op, is checked by the body it runs
    if node.op not in allowed and node.op not in CALL_OPS and node.op not in library:
        problems.append(f"{node.name} ({node.op}){chain}{context}")
    for name in called:
        if name in via:
            continue  # recursion: the body was checked at its first visit
        if name not in library:
            problems.append(
                f"{node.name} ({node.op}) calls {name}, not in the graph's function library{chain}{context}"
            )
            continue
        for inner in library[name].node_def:
            problems += _node_problems(inner, allowed, library, where, via + (name,), caller or node.name)
    return problems


def _refuse(bad: list[str], what: str, allow_ops: Iterable[str]) -> None:
    if not bad:
        return
    bad = list(dict.fromkeys(bad))
    listed = ", ".join(bad[:8])
    more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    ops = sorted({line.split("(", 1)[1].split(")", 1)[0] for line in bad if "(" in line})
    raise UnsafeGraphError(
        f"{what} would execute {len(bad)} op(s) that are not pure tensor computations: {listed}{more}. "
        "bertc will not execute a graph that could read or write files, reach the network or call back "
        "into Python, neither when it loads the model (restore, init ops) nor when it runs it. If you "
        f"know these ops are harmless in your graph, allow them with security.allow_ops=[{','.join(ops)}]."
    )


# ---- TF2 object-based SavedModels ----------------------------------------------------------------------
# tf.saved_model.load restores a TF2 model's variables with TensorFlow's own checkpoint code, then runs the
# init op's function (assets, tables) and the restore functions of objects that saved their own
# (saveable_objects); the serving signature runs when verify and bench call it (bertc/frontends checks
# that one). Those functions, and every function they call, are checked here; the restore functions may
# also read the checkpoint (RestoreV2) and assign what they read.

TF2_RESTORE_OPS = RESTORE_READ_OPS | RESTORE_ASSIGN_OPS | frozenset({"StringJoin", "ShardedFilename"})


def refuse_unsafe_tf2_loading(meta_graph, allow_ops: Iterable[str] = ()) -> dict[str, set[str]]:
    """Check the functions tf.saved_model.load runs for a TF2 model; returns purpose -> function names."""
    library = _functions(meta_graph.graph_def)
    run: dict[str, set[str]] = {"init op": set(), "restore functions": set(), "resource functions": set()}
    if INIT_OP_SIGNATURE in meta_graph.signature_def:
        run["init op"] |= _functions_behind(meta_graph.signature_def[INIT_OP_SIGNATURE], meta_graph)
    objects = meta_graph.object_graph_def.nodes
    for node in objects:
        for saveable in node.saveable_objects.values():
            for index in (saveable.save_function, saveable.restore_function):
                run["restore functions"] |= _concrete_functions(objects[index])
        # The loader recreates and initializes every tracked resource (tables, TrackableResources), used by
        # serving or not, and destroys it later: its creator, initializer and destroyer run.
        if node.HasField("resource"):
            for child in node.children:
                if child.local_name in RESOURCE_FUNCTIONS:
                    run["resource functions"] |= _concrete_functions(objects[child.node_id])
    bad = []
    checked: set[str] = set()  # an initializer the init op calls is a resource function too: checked once
    for purpose, names in run.items():
        allowed = PURE_OPS | set(allow_ops) | (TF2_RESTORE_OPS if purpose == "restore functions" else frozenset())
        for name in sorted(names - checked):
            checked.add(name)
            if name not in library:
                bad.append(f"{name}, which the {purpose} names, is not in the function library")
                continue
            for inner in library[name].node_def:
                bad += _node_problems(inner, allowed, library, where=purpose, via=(name,))
    _refuse(bad, "loading the model", allow_ops)
    return run


RESOURCE_FUNCTIONS = ("_create_resource", "_initialize", "_destroy_resource")


def _concrete_functions(node) -> set[str]:
    """The concrete functions an object-graph node stands for (a tf.function's traces, or a bare one)."""
    if node.HasField("function"):
        return set(node.function.concrete_functions)
    if node.HasField("bare_concrete_function"):
        return {node.bare_concrete_function.concrete_function_name}
    return set()


def _functions_behind(signature, meta_graph) -> set[str]:
    """The library functions every node behind a signature's outputs calls, through data and control edges:
    a TF2 init op is a NoOp whose control inputs call the initializers."""
    graph_def = meta_graph.graph_def
    nodes = nodes_by_name(graph_def)
    library = _functions(graph_def)
    names: set[str] = set()
    seen: set[str] = set()
    pending = [split_input(tensor.name)[0] for tensor in signature.outputs.values()]
    while pending:
        name = pending.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        names |= set(_called_functions(nodes[name], library))
        pending += [split_input(source)[0] for source in nodes[name].input]
    return names


# ---- the model folder's own files ------------------------------------------------------------------
# Every input kind is read from one folder, and only from it: a symbolic link in it, a file name its
# metadata gives (an asset, a safetensors shard named by the index, the checkpoint a `checkpoint` file
# names) and, for the folders bertc exports from, a hard link shared with a file elsewhere are resolved
# and refused when they leave it, before anything reads them (the digest included).


def refuse_outside_links(path: Path, hard_links: bool = False) -> None:
    """A symbolic link in the model folder must stay inside it: TensorFlow and the digest would follow it.

    hard_links: also refuse a file with a name outside the folder (more links than names inside it). A
    SavedModel may be hard links (a previous run's serving/<name>/1/ shares model/'s files); a Hugging
    Face or checkpoint folder, which bertc reads to export, may not."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ModelError(_broken_link_message(path, path))
    root = path.resolve()
    if not root.is_dir():
        return  # the loader says what is missing
    names_inside: dict[tuple[int, int], list[Path]] = {}
    for folder, subfolders, files in os.walk(root):  # os.walk does not descend into linked folders
        for name in subfolders + files:
            entry = Path(folder) / name
            if not entry.is_symlink():
                if hard_links and name in files:
                    status = entry.stat()
                    names_inside.setdefault((status.st_dev, status.st_ino), []).append(entry)
                continue
            try:
                target = entry.resolve(strict=True)
            except (OSError, RuntimeError):
                raise ModelError(_broken_link_message(entry, path)) from None
            if not target.is_relative_to(root):
                raise ModelError(
                    f"{entry} is a symbolic link to {target}, outside the model folder {path}. bertc "
                    "reads only the model's own files (TensorFlow would follow the link when loading it); "
                    "copy the file into the folder instead of linking it."
                )
    for entries in names_inside.values():
        if entries[0].stat().st_nlink > len(entries):
            raise ModelError(
                f"{entries[0]} is a hard link shared with a file outside the model folder {path} (it has "
                f"{entries[0].stat().st_nlink} names, {len(entries)} inside the folder). bertc reads only the "
                "model's own files; copy the file into the folder (cp, not ln) instead of linking it."
            )


def inside_folder(root: Path, name: str, what: str) -> Path:
    """The path a file name from the model's metadata stands for under `root`; refused if it leaves it.

    `name` may be relative (resolved against root, `..` included) or absolute; links are followed."""
    root = Path(root)
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"{what} names {name!r}, not a file name; the model's metadata is broken: export it again.")
    path = root / name
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise ModelError(_broken_link_message(path, root)) from None
    if not resolved.is_relative_to(root.resolve()):
        raise ModelError(
            f"{what} names {name!r}, which resolves to {resolved}, outside the model folder {root}. bertc "
            "reads only the model's own files; put the file into the folder and name it relative to it."
        )
    return path


def refuse_outside_assets(meta_graph, path: Path) -> None:
    """The asset files TensorFlow's loader would open (`<model>/assets/<filename>`) must be in the folder."""
    from tensorflow.core.protobuf import meta_graph_pb2

    assets = list(meta_graph.asset_file_def)
    if ASSETS_COLLECTION in meta_graph.collection_def:
        for packed in meta_graph.collection_def[ASSETS_COLLECTION].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            packed.Unpack(asset)
            assets.append(asset)
    for asset in assets:
        inside_folder(Path(path), os.path.join("assets", asset.filename), f"the asset for {asset.tensor_info.name}")


def _broken_link_message(entry: Path, root: Path) -> str:
    try:
        entry.resolve(strict=True)
        problem = "cannot be followed"
    except RuntimeError:
        problem = "is a symbolic link loop"
    except OSError as error:
        loop = error.errno == errno.ELOOP
        problem = "is a symbolic link loop" if loop else f"is a dangling link (to {os.readlink(entry)})"
    return f"{entry} in the model folder {root} {problem}; fix or remove the link."
