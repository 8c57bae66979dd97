"""precision=int8 on an ONNX model: the matmuls the precision map marked (Graph.quantize) become ONNX Runtime's
integer matmuls, their weights quantized once here, per output channel, to signed int8.

Activations: `dynamic` (default) quantizes each call's activations from their own range (DynamicQuantizeLinear +
MatMulInteger: nothing to calibrate, robust to the input's lengths); `static` reads their ranges from seeded batches
at build time (QuantizeLinear/DequantizeLinear pairs around each matmul). Everything else stays float32: the
embeddings, the attention's own products and softmax, LayerNorm, the pooler and the classifier.

`reduce_range` (7-bit weights) follows ONNX Runtime's advice: on x86 CPUs without VNNI its u8 x s8 kernels can
saturate at 8 bits; with VNNI (avx512_vnni, avx_vnni) they do not. It is chosen for the machine that builds and
recorded in bertc_onnx.json: build on a machine of the kind that serves.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bertc.errors import ModelError
from bertc.targets.base import TargetOptions, engine_node_names

MS_DOMAIN = "com.microsoft"
SERVING_INPUTS = ("input_ids", "input_mask", "segment_ids")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INTEGER_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeLinear", "QuantizeLinear")


def quantize(
    model: Any, marked: Mapping[str, str], serving_names: Mapping[str, str], options: TargetOptions
) -> tuple[Any, dict]:
    """(float ONNX model, {ONNX node name: role}) -> (the model with those nodes in int8, what was done). A node is a
    MatMul, or an Attention that bertc fused from marked Q, K, V matmuls (it becomes QAttention: dynamic only).
    `serving_names`: bertc's input name -> the model's (the user's), for the calibration batches."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    if not marked:
        raise ModelError(
            "precision=int8 marked no dense matmul to quantize: the precision map's int8 roles found no matmul with "
            "a weight operand in this graph. Check the roles in the run's report (input.roles)."
        )
    _declare_ms_domain(model)
    model = _with_types(model)
    reduce_range = not any(flag in _cpu_flags() for flag in VNNI_FLAGS)
    common = {
        "nodes_to_quantize": list(marked),
        "op_types_to_quantize": ["MatMul", "Attention"],
        "per_channel": True,
        "reduce_range": reduce_range,
        "weight_type": QuantType.QInt8,
        # the fused operators (FastGelu, LayerNormalization) have no ONNX shape inference: say their outputs are float
        "extra_options": {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    }
    with tempfile.TemporaryDirectory(prefix="bertc-int8-") as work:
        source, target = Path(work) / "float.onnx", Path(work) / "int8.onnx"
        onnx.save_model(model, str(source))
        if options.params.activations == "static":
            inputs = {entry.name for entry in model.graph.input}
            reader = _CalibrationReader(options, {key: serving_names.get(key, key) for key in SERVING_INPUTS}, inputs)
            quantize_static(str(source), str(target), reader, activation_type=QuantType.QUInt8, **common)
        else:
            quantize_dynamic(str(source), str(target), **common)
        quantized = onnx.load_model(str(target))
    done = collections.Counter(node.op_type for node in quantized.graph.node)
    info = {
        "matmuls": len(marked),
        "roles": dict(sorted(collections.Counter(marked.values()).items())),
        "activations": options.params.activations,
        "reduce_range": reduce_range,
        "integer_ops": {op: done[op] for op in INTEGER_OPS if done[op]},
    }
    return quantized, info


def onnx_names(model: Any, marked: Mapping[str, str]) -> dict[str, str]:
    """TensorFlow MatMul name -> its ONNX node's name (tf2onnx keeps the names under its traced function's prefix)."""
    return engine_node_names(marked, [node.name for node in model.graph.node if node.op_type == "MatMul"], "ONNX")


def _declare_ms_domain(model: Any) -> None:
    """ONNX Runtime's fused operators live in com.microsoft; its optimizer leaves the domain undeclared, which ONNX's
    shape inference (run by the quantizer) refuses."""
    import onnx

    if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


def _with_types(model: Any) -> Any:
    """The model with every tensor's type and shape recorded, ONNX Runtime's fused operators' outputs included
    (its symbolic shape inference knows them; ONNX's does not): the quantizer quantizes an activation only where it
    knows the type, so without this the inputs read from SkipLayerNormalization or FastGelu stay float."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)


def _cpu_flags() -> set[str]:
    from bertc.runtime.machine import cpu_flags

    return cpu_flags()


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over seeded synthetic batches (bertc/evaluate/batches.py): every quarter
    of the sequence length, both segments, the compiled batch size."""

    def __init__(self, options: TargetOptions, names: Mapping[str, str], inputs: set[str]):
        from bertc.evaluate.batches import synthetic_batches

        shape = options.model_shape or {}
        vocab, seq_len = int(shape.get("vocab", 30522)), options.seq_len
        batches = synthetic_batches(options.params.calibration_batches, options.batch_size, seq_len, vocab, seed=1234)
        feeds = [{names[key]: np.asarray(value, np.int32) for key, value in batch.feeds().items()} for batch in batches]
        self._feeds = iter([{key: value for key, value in feed.items() if key in inputs} for feed in feeds])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)
