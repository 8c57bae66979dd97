"""The tiny model -> copies that do harm when TensorFlow loads or runs them (each writes a canary file).

Each builder edits a copy's saved_model.pb in place: a WriteFile (or a SaveV2 to another path) is
wired where TensorFlow's loader runs it, on a path other than serving inputs -> outputs, or into a
second meta graph. `tests/frontends/test_hostile.py` checks bertc refuses every one and that TensorFlow itself
does write the canary, so the cases stay real.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tensorflow.core.framework import node_def_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2


def edit_proto(path: Path, edit: Callable[[saved_model_pb2.SavedModel], None]) -> None:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    edit(proto)
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())


def _string_const(graph_def, name: str, value: bytes | list[bytes]) -> str:
    """A string scalar, or a vector when `value` is a list."""
    node = graph_def.node.add()
    node.name, node.op = name, "Const"
    node.attr["dtype"].type = types_pb2.DT_STRING
    node.attr["value"].tensor.dtype = types_pb2.DT_STRING
    if isinstance(value, list):
        node.attr["value"].tensor.tensor_shape.dim.add().size = len(value)
    node.attr["value"].tensor.string_val.extend(value if isinstance(value, list) else [value])
    return name


def add_write(graph_def, canary: Path, prefix: str = "hostile") -> str:
    """A WriteFile of the canary and a NoOp that needs it; returns the NoOp's name."""
    write = graph_def.node.add()
    write.CopyFrom(node_def_pb2.NodeDef(name=f"{prefix}/write", op="WriteFile"))
    write.input.extend(
        [
            _string_const(graph_def, f"{prefix}/path", str(canary).encode()),
            _string_const(graph_def, f"{prefix}/contents", b"written by the model"),
        ]
    )
    group = graph_def.node.add()
    group.name, group.op = f"{prefix}/run", "NoOp"
    group.input.append(f"^{prefix}/write")
    return group.name


def _node(graph_def, name: str):
    return next(node for node in graph_def.node if node.name == name)


def in_restore_op(path: Path, canary: Path) -> None:
    def edit(proto):
        meta = proto.meta_graphs[0]
        restore = _node(meta.graph_def, meta.saver_def.restore_op_name)
        restore.input.append("^" + add_write(meta.graph_def, canary))

    edit_proto(path, edit)


def in_init_op(path: Path, canary: Path) -> None:
    def edit(proto):
        meta = proto.meta_graphs[0]
        signature = meta.signature_def["__saved_model_init_op"]
        signature.outputs["__saved_model_init_op"].name = add_write(meta.graph_def, canary)

    edit_proto(path, edit)


def in_main_op_collection(path: Path, canary: Path, key: str = "saved_model_main_op") -> None:
    def edit(proto):
        meta = proto.meta_graphs[0]
        meta.collection_def[key].node_list.value.append(add_write(meta.graph_def, canary))

    edit_proto(path, edit)


def in_legacy_init_op(path: Path, canary: Path) -> None:
    in_main_op_collection(path, canary, key="legacy_init_op")


def in_second_meta_graph(path: Path, canary: Path) -> None:
    """meta_graphs[0] (tags serve, gpu) is clean; [1] (tags exactly serve: the one TensorFlow loads)
    writes in its restore op."""

    def edit(proto):
        clean = proto.meta_graphs[0]
        hostile = proto.meta_graphs.add()
        hostile.CopyFrom(clean)
        clean.meta_info_def.tags.append("gpu")
        restore = _node(hostile.graph_def, hostile.saver_def.restore_op_name)
        restore.input.append("^" + add_write(hostile.graph_def, canary))

    edit_proto(path, edit)


def in_function_called_by_restore(path: Path, canary: Path) -> None:
    """A StatefulPartitionedCall in the restore op, whose library function writes the canary."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def hidden_writer():
        tf.io.write_file(str(canary), "written by a function")
        return tf.constant(1)

    function_def = hidden_writer.get_concrete_function().function_def

    def edit(proto):
        meta = proto.meta_graphs[0]
        meta.graph_def.library.function.add().CopyFrom(function_def)
        call = meta.graph_def.node.add()
        call.name, call.op = "hostile/call", "StatefulPartitionedCall"
        call.attr["f"].func.name = function_def.signature.name
        call.attr["Tin"].list.SetInParent()
        call.attr["Tout"].list.type.append(types_pb2.DT_INT32)
        _node(meta.graph_def, meta.saver_def.restore_op_name).input.append("^hostile/call")

    edit_proto(path, edit)


def save_elsewhere_in_restore_op(path: Path, canary: Path) -> None:
    """The saver's own SaveV2 machinery, pointed at another prefix, run by the restore op."""

    def edit(proto):
        meta = proto.meta_graphs[0]
        graph_def = meta.graph_def
        save = graph_def.node.add()
        save.name, save.op = "hostile/save", "SaveV2"
        save.input.extend(
            [
                _string_const(graph_def, "hostile/prefix", str(canary).encode()),
                _string_const(graph_def, "hostile/names", [b"leak"]),
                _string_const(graph_def, "hostile/slices", [b""]),
                _string_const(graph_def, "hostile/value", b"leaked"),
            ]
        )
        save.attr["dtypes"].list.type.append(types_pb2.DT_STRING)
        _node(graph_def, meta.saver_def.restore_op_name).input.append("^hostile/save")

    edit_proto(path, edit)


def in_table_initializer(path: Path, canary: Path) -> None:
    def edit(proto):
        meta = proto.meta_graphs[0]
        meta.collection_def["table_initializer"].node_list.value.append(add_write(meta.graph_def, canary))

    edit_proto(path, edit)


# name -> (builder, the canary file it writes relative to the canary folder, key words of bertc's refusal)
HOSTILE = {
    "restore op": (in_restore_op, "canary", ["hostile/write (WriteFile)", "restore op"]),
    "init op": (in_init_op, "canary", ["hostile/write (WriteFile)", "__saved_model_init_op"]),
    "main op collection": (in_main_op_collection, "canary", ["hostile/write (WriteFile)", "saved_model_main_op"]),
    "legacy init op": (in_legacy_init_op, "canary", ["hostile/write (WriteFile)", "legacy_init_op"]),
    "second meta graph": (in_second_meta_graph, "canary", ["hostile/write (WriteFile)", "restore op"]),
    "function in restore op": (
        in_function_called_by_restore,
        "canary",
        ["(WriteFile) in function", "hidden_writer", "called by node hostile/call"],
    ),
    "SaveV2 elsewhere": (save_elsewhere_in_restore_op, "canary.index", ["hostile/save (SaveV2)", "restore op"]),
    "table initializer": (in_table_initializer, "canary", ["hostile/write (WriteFile)", "table initialiser"]),
}
