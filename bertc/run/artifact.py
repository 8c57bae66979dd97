"""A compiled SavedModel folder -> its canonical digest: one value for every compile of one plan.

What TensorFlow writes that is not a function of the plan alone:
- `fingerprint.pb` holds a random UUID, new at every save (its other fields hash saved_model.pb
  and the checkpoint). It is left out of the digest.
- `saved_model.pb` names each traced function `__inference_<name>_<uid>` and each captured variable's
  argument `_user_specified_name: "<number>"`, both numbers from counters that run for the whole
  process. Two fresh processes compiling the same plan write byte-identical files; a second
  compile in one process (a sweep on the basic launcher, a test) gets other numbers. The digest
  hashes saved_model.pb with those numbers replaced by their rank, the function library sorted by
  the new names, serialized deterministically.
- `variables/*` (the checkpoint) is deterministic and hashed byte for byte, as is any other file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from bertc.digest import hash_file

DIGEST_NOTE = (
    "sha256 over every file but fingerprint.pb (random UUID per save); saved_model.pb with TensorFlow's "
    "per-process function numbers canonicalised (bertc/run/artifact.py)"
)
NONDETERMINISTIC_FILES = ("fingerprint.pb",)
_UID_SUFFIX = re.compile(r"^(.*)_(\d+)$")


def artifact_files(path: Path) -> list[Path]:
    """The files the digest covers, in a fixed order."""
    names = sorted(file.relative_to(path).as_posix() for file in path.rglob("*") if file.is_file())
    return [path / name for name in names if name not in NONDETERMINISTIC_FILES]


def artifact_digest(path: str | Path) -> str:
    path = Path(path)
    digest = hashlib.sha256(b"bertc-artifact-1\0")
    for file in artifact_files(path):
        name = file.relative_to(path).as_posix()
        digest.update(name.encode() + b"\0")
        if name == "saved_model.pb":
            digest.update(canonical_saved_model(file.read_bytes()))
        else:
            hash_file(digest, file)
    return "sha256:" + digest.hexdigest()


def file_digests(path: str | Path) -> dict[str, str]:
    """Plain sha256 of every file of the folder (fingerprint.pb included): for byte-level comparisons."""
    path = Path(path)
    return {
        file.relative_to(path).as_posix(): hash_file(hashlib.sha256(), file).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def canonical_saved_model(data: bytes) -> bytes:
    """saved_model.pb bytes -> the same SavedModel, per-process numbers replaced by ranks, serialized
    deterministically."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(data)
    _renumber_captures(saved_model)
    libraries = [graph.graph_def.library for graph in saved_model.meta_graphs]
    renames = _canonical_names([function.signature.name for library in libraries for function in library.function])
    if renames:
        alternatives = "|".join(map(re.escape, sorted(renames, key=len, reverse=True)))
        pattern = re.compile(rf"(?<![A-Za-z0-9_])({alternatives})(?![A-Za-z0-9_])")
        _rename_strings(saved_model, lambda text: pattern.sub(lambda match: renames[match.group(1)], text))
    for library in libraries:
        # NOTE: the library's order follows TensorFlow's hashing of the old names; sort by the new ones.
        functions = sorted(library.function, key=lambda function: function.signature.name)
        gradients = sorted(library.gradient, key=lambda entry: (entry.function_name, entry.gradient_func))
        library.ClearField("function")
        library.ClearField("gradient")
        library.function.extend(functions)
        library.gradient.extend(gradients)
    return saved_model.SerializeToString(deterministic=True)


def _canonical_names(names: list[str]) -> dict[str, str]:
    """Each name ending in _<uid> -> the same prefix with the uid's rank among all the names' uids."""
    numbered = [(int(match[2]), name, match[1]) for name in set(names) if (match := _UID_SUFFIX.match(name))]
    return {name: f"{prefix}_{rank}" for rank, (_, name, prefix) in enumerate(sorted(numbered))}


def _renumber_captures(saved_model) -> None:
    """A captured variable's argument is named after a per-process capture number: replace it by its rank."""
    captures = []
    for graph in saved_model.meta_graphs:
        attr_maps = [node.attr for node in graph.graph_def.node]
        for function in graph.graph_def.library.function:
            attr_maps += [node.attr for node in function.node_def]
            attr_maps += [arg.attr for arg in function.arg_attr.values()]
        captures += [
            attrs["_user_specified_name"]
            for attrs in attr_maps
            if "_user_specified_name" in attrs and attrs["_user_specified_name"].s.isdigit()
        ]
    ranks = {number: rank for rank, number in enumerate(sorted({int(attr.s) for attr in captures}))}
    for attr in captures:
        attr.s = b"capture_%d" % ranks[int(attr.s)]


def _rename_strings(message, rename) -> None:
    """Apply `rename` to every string in a protobuf message, map keys included (constant tensors skipped)."""
    if message.DESCRIPTOR.full_name == "tensorflow.TensorProto":
        return
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                _rename_map(value, field.message_type, rename)
            elif _is_repeated(field):
                for item in value:
                    _rename_strings(item, rename)
            else:
                _rename_strings(value, rename)
        elif field.type in (field.TYPE_STRING, field.TYPE_BYTES):
            convert = _converter(field, rename)
            if _is_repeated(field):
                value[:] = [convert(item) for item in value]
            else:
                setattr(message, field.name, convert(value))


def _is_repeated(field) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf 5.28+; `label` is gone in 7
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _rename_map(container, entry_type, rename) -> None:
    """A map's keys and values renamed; the map rebuilt, since a key cannot be changed in place."""
    rename_key = _converter(entry_type.fields_by_name["key"], rename)
    value_field = entry_type.fields_by_name["value"]
    if value_field.type == value_field.TYPE_MESSAGE:
        entries = []
        for key in list(container):
            entry = type(container[key])()
            entry.CopyFrom(container[key])
            _rename_strings(entry, rename)
            entries.append((rename_key(key), entry))
        container.clear()
        for key, entry in entries:
            container[key].CopyFrom(entry)
    else:
        rename_value = _converter(value_field, rename)
        entries = [(rename_key(key), rename_value(container[key])) for key in list(container)]
        container.clear()
        for key, value in entries:
            container[key] = value


def _converter(field, rename):
    """`rename` for a string field, the same through UTF-8 for a bytes field, identity for anything else."""
    if field.type == field.TYPE_STRING:
        return rename
    if field.type != field.TYPE_BYTES:
        return lambda value: value

    def rename_bytes(data: bytes) -> bytes:
        try:
            return rename(data.decode("utf-8")).encode("utf-8")
        except UnicodeDecodeError:  # a binary payload: no function name in it
            return data

    return rename_bytes
