"""target=openvino: the rewritten graph (every pass applied, the length rewrite included) as an OpenVINO IR,
compiled for the CPU in f32 (precision=int8: the marked matmuls in int8), served by plain `openvino` with the
user's input names.

The serving function target=tf would save is converted by `openvino.convert_model` and written as
`model/model.xml` + `model/model.bin` (weights kept in f32: save_model's default would halve them to f16) plus
`bertc_openvino.json` (inputs, outputs, versions). Nothing of bertc or TensorFlow is needed to serve it:

    import openvino, numpy as np
    core = openvino.Core()
    compiled = core.compile_model("model/model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled({"input_ids": ids, "input_mask": mask, "segment_ids": segments})  # int32 [batch, S]
    probabilities = outputs["probabilities"]

Compiled with INFERENCE_PRECISION_HINT f32 set explicitly (OpenVINO's default on a CPU with bf16 instructions is
bf16, slower on this host's kind and outside the 1e-5 gate) and PERFORMANCE_HINT LATENCY: one stream over the
plan's threads (target.intra_op_threads, which bertc sets in TensorFlow for the run; 0: every core), which is what
one request at a time wants at batch 1 and batch 8 alike. THROUGHPUT splits the cores into streams that pay only
with several requests in flight: on the demo model, 2 cores, one request at a time, it measured 46-50 seq/s at
batch 8 against LATENCY's 52-56 (batch 1 within noise; a shared host under load, so rough: one thread measured
69 there, only because other work held the second core).
precision=int8 quantizes the matmuls the precision map marked with NNCF (bertc/targets/openvino_int8.py): int8
weights in model.bin, quantized once at build time; `activations=dynamic` adds the CPU plugin's
DYNAMIC_QUANTIZATION_GROUP_SIZE to the compile config, which bertc_openvino.json records ("compile") with what was
quantized ("int8"). The attention math, LayerNorm, the embeddings, the pooler and the classifier stay f32.
The `run_dir/serving/ovms/<name>/1/` folder is OpenVINO Model Server's model-repository layout.

Needs the `openvino` extra (pip install 'bertc[openvino]'; nncf for int8); without it the target stops before any
work.
`openvino.convert_model` sends OpenVINO's anonymous usage telemetry by default (about a hundred events a
conversion); bertc leaves that consent to the user: `opt_in_out --opt_out` stops it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bertc.errors import ConfigError
from bertc.ir.graph import Graph, GraphError
from bertc.ir.signature import SERVING_INPUTS, SERVING_OUTPUTS
from bertc.run.serving_layout import SERVING_VERSION, write_repository
from bertc.targets.base import EngineArtifact, QuantizingTarget, TargetOptions
from bertc.targets.openvino_int8 import DYNAMIC_GROUP_SIZE, nncf_version, openvino_names, quantize

EXTRA = "pip install 'bertc[openvino]'"
MODEL_FILE, WEIGHTS_FILE, INFO_FILE = "model.xml", "model.bin", "bertc_openvino.json"
# NOTE: f32 explicitly: without it a CPU with bf16 instructions computes in bf16 (see the module docstring)
COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def _missing(module: str = "openvino") -> bool:
    return importlib.util.find_spec(module) is None


class OpenVinoArtifact(EngineArtifact):
    """An OpenVINO model (in memory until saved) and what its conversion recorded."""

    info_file = INFO_FILE

    def write_model(self, path: Path) -> None:
        import openvino

        openvino.save_model(self.model, str(path / MODEL_FILE), compress_to_fp16=False)  # f32 weights in model.bin

    def open(self, path: Path, served=None) -> OpenVinoModel:
        from bertc.frontends.signature import output_names

        names = dict(served.input_names) if served is not None else {}
        outputs = output_names(served) if served is not None else {}
        info = self.saved_info(path)
        config = {**info.get("compile", COMPILE_CONFIG), **_threads(int(info.get("threads", 0)))}
        return OpenVinoModel(path / MODEL_FILE, names, outputs, config)

    def describe(self, path: Path, run_dir: Path, label: str, user: Mapping) -> dict:
        info = self.saved_info(path)
        # OpenVINO Model Server's repository: <name>/1/model.xml|bin, links to (or copies of) model/'s files
        base = write_repository(
            path, run_dir, "ovms", label, {f"{SERVING_VERSION}/{file}": file for file in (MODEL_FILE, WEIGHTS_FILE)}
        )
        config = ", ".join(f'"{key}": "{value}"' for key, value in info.get("compile", COMPILE_CONFIG).items())
        return {
            "engine": f"openvino {info['versions']['openvino']}",
            "files": f"{path / MODEL_FILE}, {path / WEIGHTS_FILE}, {path / INFO_FILE}",
            "inputs": ", ".join(info["inputs"]),
            "outputs": ", ".join(info["outputs"]),
            **({"int8": _int8_line(info["int8"])} if "int8" in info else {}),
            "how": (
                f"openvino.Core().compile_model('{path / MODEL_FILE}', 'CPU', {{{config}}})"
                "({input: int32 [batch, S]})"
            ),
            "ovms": (
                f"OpenVINO Model Server layout {base}/{SERVING_VERSION}/ (links to model/): "
                f"ovms --model_name {base.name} --model_path {base} --port 9000"
            ),
        }


class OpenVinoModel:
    """model.xml compiled for the CPU with the artifact's compile config (f32), fed under the user's names; outputs
    read back as probabilities and logits whatever keys the user's signature gave them."""

    def __init__(
        self, model: Path, input_names: Mapping[str, str], output_names: Mapping[str, str], config: Mapping[str, Any]
    ):
        import openvino

        core = openvino.Core()
        self._compiled = core.compile_model(core.read_model(str(model)), "CPU", dict(config))
        self._request = self._compiled.create_infer_request()
        self._names = dict(input_names)
        self._outputs = {served: name for name, served in output_names.items()}
        self._expected = {port.get_any_name() for port in self._compiled.inputs}
        self._keys = [port.get_any_name() for port in self._compiled.outputs]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        named = {self._names.get(key, key): np.asarray(value, np.int32) for key, value in feeds.items()}
        missing = sorted(self._expected - set(named))
        if missing:  # else OpenVINO would run on whatever the request's input tensors held last
            raise ValueError(f"the OpenVINO model takes {', '.join(missing)}, which the feeds lack: {sorted(named)}")
        results = self._request.infer({key: value for key, value in named.items() if key in self._expected})
        # NOTE: copied: the request reuses its output tensors' memory on the next call
        return {self._outputs.get(key, key): np.array(results[index]) for index, key in enumerate(self._keys)}


class OpenVinoTarget(QuantizingTarget):
    name = "openvino"  # precision=int8: NNCF quantizes the marked matmuls (bertc/targets/openvino_int8.py)
    float32_only = "bertc compiles OpenVINO models in f32, and bf16 is slower than f32 on this CPU kind."

    def check_available(self, options: TargetOptions) -> None:
        if _missing():
            raise ConfigError(f"target=openvino needs openvino, which is not installed: {EXTRA}. Nothing was compiled.")
        self.refuse_gpu_and_narrow_floats(options)
        if options.quantize and _missing("nncf"):
            raise ConfigError(
                f"target=openvino quantizes precision=int8 with nncf, which is not installed: {EXTRA}. Nothing was "
                "compiled."
            )

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        if _missing():
            return {}
        # nncf builds int8 artifacts only: an fp32 fingerprint does not depend on whether it is installed
        return {**_versions(), "nncf": nncf_version()} if quantize and not _missing("nncf") else _versions()

    def lower(self, graph: Graph, options: TargetOptions) -> OpenVinoArtifact:
        import tensorflow as tf

        from bertc.targets.serving import CompiledBert, Placement

        module = CompiledBert(graph, options.seq_len, Placement(options.host_device, None, jit_compile=False))
        model = _convert(module, graph)
        int8: dict[str, Any] = {}
        if options.quantize:
            model, int8 = _quantize(model, graph, options)
        info: dict[str, Any] = {
            "inputs": [port.get_any_name() for port in model.inputs],
            "outputs": [port.get_any_name() for port in model.outputs],
            # the plan's target.intra_op_threads, which bertc's pipeline set in TensorFlow (0: every core)
            "threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "versions": _versions(),
            "compile": compile_config(options),
            **({"int8": int8} if int8 else {}),
        }
        return OpenVinoArtifact(model, info)


def _quantize(model: Any, graph: Graph, options: TargetOptions) -> tuple[Any, dict]:
    """The converted model with the precision map's matmuls (Graph.quantize, by TensorFlow name) in int8."""
    int8 = openvino_names(model, graph.quantize)  # TensorFlow name -> OpenVINO friendly name
    marked = {int8[name]: role for name, role in graph.quantize.items()}
    return quantize(model, marked, graph.serving_names, options)


def compile_config(options: TargetOptions) -> dict[str, str]:
    """The CPU plugin's config the artifact is served with (recorded in bertc_openvino.json, threads aside)."""
    if options.quantize and options.params.activations == "dynamic":
        # NOTE: explicit: int8-weight matmuls get their activations quantized at run time in groups of this size
        return {**COMPILE_CONFIG, "DYNAMIC_QUANTIZATION_GROUP_SIZE": str(DYNAMIC_GROUP_SIZE)}
    return dict(COMPILE_CONFIG)


def _convert(module, graph: Graph) -> Any:
    """The module's serving function -> an openvino.Model whose ports carry the user's input and output keys
    (`graph.serving_names`, `graph.serving_outputs`). The weights are copied out of the TensorFlow variables
    (share_weights=False): the model outlives the module."""
    import openvino

    model = openvino.convert_model(module.serve.get_concrete_function(), share_weights=False)
    # the module's keys (its TensorSpec and output names) -> the user's
    inputs = dict(zip(module.input_keys, (graph.serving_names.get(name, name) for name in SERVING_INPUTS)))
    outputs = {module.output_keys[name]: graph.serving_outputs.get(name, name) for name in SERVING_OUTPUTS}
    for ports, keys in ((model.inputs, inputs), (model.outputs, outputs)):
        for port in ports:
            found = [key for key in keys if key in port.get_names()]
            if len(found) != 1:
                raise GraphError(
                    f"openvino.convert_model gave a port named {sorted(port.get_names())}, expected one of "
                    f"{sorted(keys)}. This is a bug in bertc: please report it."
                )
            port.get_tensor().set_names({keys[found[0]]})
    return model


def _threads(threads: int) -> dict[str, int]:
    return {"INFERENCE_NUM_THREADS": threads} if threads else {}


def _int8_line(int8: dict) -> str:
    return (
        f"{int8['matmuls']} matmuls ({', '.join(f'{role} {count}' for role, count in int8['roles'].items())}), "
        f"{int8['activations']} activations, {int8['weights']}: {int8['mode']} (nncf {int8['nncf']})"
    )


def _versions() -> dict[str, str]:
    import openvino

    return {"openvino": openvino.__version__}


TARGET = OpenVinoTarget()
