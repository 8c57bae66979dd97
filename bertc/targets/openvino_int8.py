"""precision=int8 on an OpenVINO model: the matmuls the precision map marked (Graph.quantize) get int8 weights from
NNCF, quantized once here, per output channel (symmetric), and nothing else is touched.

Activations: `static` runs `nncf.quantize` (model type TRANSFORMER, SmoothQuant off, calibrated on seeded batches):
FakeQuantize ops before the marked matmuls only, which the CPU plugin runs as u8 x i8 FullyConnected. `dynamic` runs
`nncf.compress_weights` (INT8_SYM) on the marked matmuls only and leaves the activations to the CPU plugin, which
quantizes them at run time, per group of DYNAMIC_QUANTIZATION_GROUP_SIZE input channels, for int8-weight
FullyConnected (where its kernels have that path: VNNI or AMX; elsewhere those matmuls run with int8 weights on
f32 activations). Everything else stays f32: the embeddings, the attention's own products and softmax
(ScaledDotProductAttention), LayerNorm, the pooler and the classifier: every op but the marked matmuls is in NNCF's
ignored scope, and the result is checked against the marks.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from bertc.errors import ModelError
from bertc.targets.base import TargetOptions, engine_node_names

SERVING_INPUTS = ("input_ids", "input_mask", "segment_ids")
DYNAMIC_GROUP_SIZE = 32  # the CPU plugin's default where it quantizes activations; set explicitly, recorded
LOW_PRECISION = ("i8", "u8")
# what sits between an int8 weight constant and its matmul (NNCF's dequantization: Convert, Subtract, Multiply)
WEIGHT_PATH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")


def nncf_version() -> str:
    return importlib.metadata.version("nncf")


def openvino_names(model: Any, marked: Mapping[str, str]) -> dict[str, str]:
    """TensorFlow MatMul name -> its OpenVINO op's friendly name (openvino.convert_model keeps TensorFlow's names)."""
    matmuls = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    return engine_node_names(marked, matmuls, "OpenVINO")


def quantize(
    model: Any, marked: Mapping[str, str], serving_names: Mapping[str, str], options: TargetOptions
) -> tuple[Any, dict]:
    """(f32 openvino.Model, {op friendly name: role}) -> (the model with those matmuls in int8, what was done).
    `serving_names`: bertc's input name -> the model's (the user's), for the calibration batches."""
    import nncf

    if not marked:
        raise ModelError(
            "precision=int8 marked no dense matmul to quantize: the precision map's int8 roles found no matmul with "
            "a weight operand in this graph. Check the roles in the run's report (input.roles)."
        )
    # NOTE: Constants stay out of the ignored scope: NNCF reads an ignored weight constant as an ignored layer
    others = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() != "Constant"]
    ignored = nncf.IgnoredScope(names=[name for name in others if name not in marked], validate=False)
    with _quiet("nncf"):  # else a line for every op of the ignored scope, thousands on BERT-Base
        model, mode = _run_nncf(model, ignored, serving_names, options)
    done = check_quantized(model, marked)
    info = {
        "matmuls": len(marked),
        "roles": dict(sorted(collections.Counter(marked.values()).items())),
        "activations": options.params.activations,
        "weights": "int8 per output channel, symmetric",
        "mode": mode,
        "nncf": nncf_version(),
        **done,
    }
    return model, info


def _run_nncf(model: Any, ignored: Any, serving_names: Mapping[str, str], options: TargetOptions) -> tuple[Any, str]:
    """NNCF on the model, the ignored scope given: static (calibrated) or weights only; the model and the mode."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    # NOTE: SmoothQuant off: its scales come from the calibration batches, random tokens here; on MiniLM over MRPC
    # dev it moved argmax agreement from 0.989 (5 of 440 examples differ) without it to 0.977 (10) with it (NNCF 3.4)
    no_smooth_quant = AdvancedSmoothQuantParameters(matmul=-1)
    if options.params.activations == "static":
        feeds = calibration_feeds(options, serving_names, {port.get_any_name() for port in model.inputs})
        model = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds),
            ignored_scope=ignored,
            advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alphas=no_smooth_quant),
        )
        mode = "nncf.quantize (TRANSFORMER, no SmoothQuant), activations calibrated on seeded batches"
    else:
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=ignored)
        mode = f"nncf.compress_weights INT8_SYM, activations by the CPU plugin in groups of {DYNAMIC_GROUP_SIZE}"
    return model, mode


@contextlib.contextmanager
def _quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_quantized(model: Any, marked: Mapping[str, str]) -> dict[str, int]:
    """That the int8 weights and the activation FakeQuantize ops sit on the marked matmuls and nowhere else; their
    counts. A mismatch is NNCF placing quantizers bertc did not ask for (or missing some): a ModelError."""
    matmuls = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"}
    int8 = {name for name, op in matmuls.items() if weight_precision(op) in LOW_PRECISION}
    fake_quantize = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    fed = {target.get_node().get_friendly_name() for op in fake_quantize for target in op.output(0).get_target_inputs()}
    if int8 != set(marked) or not fed <= set(marked):
        wrong = sorted((int8 ^ set(marked)) | (fed - set(marked)))
        raise ModelError(
            f"NNCF quantized other matmuls than the {len(marked)} precision=int8 marked (differing: {wrong[:3]}, "
            f"{len(wrong)} in all). This is a bertc fault: please report it with the run's report.json."
        )
    return {"int8_weights": len(int8), "fake_quantize": len(fake_quantize)}


def weight_precision(matmul: Any) -> str:
    """The element type of the constant a MatMul's weight operand is computed from ("f32", "i8", ...), through
    NNCF's dequantization ops; "" when the operand is no constant."""
    node = matmul.input_value(1).get_node()
    while node.get_type_name() in WEIGHT_PATH:
        node = node.input_value(0).get_node()
    return node.get_element_type().get_type_name() if node.get_type_name() == "Constant" else ""


def calibration_feeds(
    options: TargetOptions, serving_names: Mapping[str, str], inputs: set[str]
) -> list[dict[str, np.ndarray]]:
    """Seeded synthetic batches (bertc/evaluate/batches.py: every quarter of the sequence length, both segments,
    the compiled batch size) fed under the model's input names."""
    from bertc.evaluate.batches import synthetic_batches

    shape = options.model_shape or {}
    vocab, count = int(shape.get("vocab", 30522)), options.params.calibration_batches
    batches = synthetic_batches(count, options.batch_size, options.seq_len, vocab, seed=1234)
    names = {key: serving_names.get(key, key) for key in SERVING_INPUTS}
    feeds = [{names[key]: np.asarray(value, np.int32) for key, value in batch.feeds().items()} for batch in batches]
    return [{key: value for key, value in feed.items() if key in inputs} for feed in feeds]
