"""One set of BERT classifier weights -> each system's own format of them, and one callable per system.

    python bench/peers.py weights SIZE WORK [SEQ_LEN]   # WORK/hf, WORK/model (S-padded), WORK/model_dynamic
    python bench/peers.py onnx WORK HEADS HIDDEN OPSET auto  # WORK/onnx/model.opt.onnx, its fusion counts
    python bench/peers.py ct2 WORK                       # WORK/ct2 (CTranslate2, float32; int8 at load time)

The weights are drawn once (bertc's seeded initializer) and written as a Hugging Face
BertForSequenceClassification folder (safetensors, `hidden_act` gelu_new: google-research's tanh GELU).
Every system starts from that folder: bertc.model.export writes the user's TF SavedModel from it (S-padded
inputs, the signature bertc's candidates compile), the same TF graph is saved with a dynamic length,
PyTorch and CTranslate2 load the folder, ONNX Runtime gets PyTorch's export of it (tf2onnx of the
dynamic SavedModel without PyTorch), OpenVINO converts the dynamic SavedModel.

Each system is fed as its users feed it: `prepare` turns a batch padded to S into the system's
input once, outside the timed calls: cut to the batch's longest real row (`[:, :L]`, dynamic
padding as Hugging Face's collators do) where the model takes a variable length, kept padded to S
where it cannot, one id list per row for CTranslate2 (it removes the padding inside the batch on
CPU). `__call__(prepared)` returns the probabilities [B, labels] as a numpy array.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

FED_PADDED = "padded to S"
FED_CUT = "[:, :L]"
FED_ROWS = "each row's own length"
# how a system is fed -> what that means, for the report's notes
FED_MEANING = {
    FED_CUT: "each batch cut to its longest real row (dynamic padding)",
    FED_PADDED: (
        "the batch as the tokenizer padded it (the user's SavedModel takes only S; bertc's builds cut or pack inside)"
    ),
    FED_ROWS: "one id list per row (CTranslate2 removes the padding inside the batch)",
}
# the packages the peers' builds and loaders import (their versions go in the report)
PACKAGES = ("onnxruntime", "tf2onnx", "onnx", "openvino", "ctranslate2", "torch", "transformers")
# onnxruntime's optimizer model type (--ort-model-type) -> the exporter that makes its ONNX model (build_onnx)
ORT_EXPORTERS = {"auto": "auto", "bert": "torch", "bert_tf": "tf2onnx"}
HF_ACTIVATION = "gelu_new"  # Hugging Face's name for google-research's tanh GELU, which the TF export builds
# The three inputs each system reads, by the names a system may give them.
INPUT_ALIASES = {
    "input_ids": ("input_ids",),
    "input_mask": ("input_mask", "attention_mask"),
    "segment_ids": ("segment_ids", "token_type_ids"),
}


class Missing(Exception):
    """A system that cannot run here: what is missing and how to install it."""


def require(*packages: str, hint: str) -> None:
    absent = [name for name in packages if importlib.util.find_spec(name) is None]
    if absent:
        raise Missing(f"not installed: {', '.join(absent)} ({hint})")


# ---- per-batch padding (pure) -------------------------------------------------------------------


def row_lengths(feeds: dict) -> np.ndarray:
    """Each row's real tokens (the mask is right-padded: BERT tokenizers pad on the right)."""
    return np.asarray(feeds["input_mask"]).sum(axis=1).astype(np.int64)


def cut_to_longest(feeds: dict) -> dict:
    """A batch padded to S -> the same batch padded to its longest real row L: `[:, :L]` of each [B, S] input."""
    longest = max(int(row_lengths(feeds).max()), 1)
    return {
        key: np.ascontiguousarray(value[:, :longest]) if np.ndim(value) == 2 else value for key, value in feeds.items()
    }


# ---- the weights, in each format (build steps: `python bench/peers.py ...`) ------------------------


def hf_name(google: str) -> tuple[str, bool]:
    """A google-research variable name -> (the Hugging Face BertForSequenceClassification name, transpose?)."""
    if google in ("output_weights", "output_bias"):
        return {"output_weights": "classifier.weight", "output_bias": "classifier.bias"}[google], False
    parts = google.split("/")[1:]  # without the leading "bert"
    if parts[0] == "encoder":
        parts = ["encoder", "layer", parts[1].removeprefix("layer_"), *parts[2:]]
    *scope, leaf = parts
    if leaf in ("gamma", "beta"):
        return ".".join(["bert", *scope, "weight" if leaf == "gamma" else "bias"]), False
    if leaf.endswith("_embeddings"):
        return ".".join(["bert", *scope, leaf, "weight"]), False
    return ".".join(["bert", *scope, "weight" if leaf == "kernel" else "bias"]), leaf == "kernel"


def hf_config(config, num_labels: int) -> dict:
    return {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": HF_ACTIVATION,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "id2label": {str(label): f"LABEL_{label}" for label in range(num_labels)},
        "label2id": {f"LABEL_{label}": label for label in range(num_labels)},
        "torch_dtype": "float32",
    }


def write_hf_folder(size: str, folder: Path, seed: int = 0, num_labels: int = 2) -> Path:
    """Draw the weights (bertc's seeded initializer) and write them as a Hugging Face folder."""
    from safetensors.numpy import save_file

    from bertc.model.config import preset
    from bertc.model.vocab import synthetic_vocab
    from bertc.model.weights import random_weights

    config = preset(size)
    tensors = {}
    for name, value in random_weights(config, num_labels, seed).items():
        target, transpose = hf_name(name)
        tensors[target] = np.ascontiguousarray(value.T if transpose else value, dtype=np.float32)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(config, num_labels), indent=2) + "\n")
    (folder / "vocab.txt").write_text("\n".join(synthetic_vocab(config.vocab_size)) + "\n")
    return folder


def save_dynamic_length(hf_folder: Path, out: Path) -> Path:
    """The same weights and graph as the user's export, with [None, None] inputs: a variable length."""
    import tensorflow as tf

    from bertc.model.bert import build_classifier
    from bertc.model.saved_model import SERVING_INPUTS
    from bertc.model.sources import complete_weights, read_hf_folder

    v1 = tf.compat.v1
    config, weights, labels, _, _ = read_hf_folder(hf_folder)
    weights, _ = complete_weights(config, weights, labels, seed=0)
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        endpoints = build_classifier(config, labels, None)
        variables = {variable.op.name: variable for variable in v1.global_variables()}
        for name, value in weights.items():
            session.run(variables[name].initializer, {variables[name].initializer.inputs[1]: value})
        signature = v1.saved_model.predict_signature_def(
            inputs={name: endpoints[name] for name in SERVING_INPUTS},
            outputs={"probabilities": endpoints["probabilities"]},
        )
        builder = v1.saved_model.Builder(str(out))
        builder.add_meta_graph_and_variables(
            session, [v1.saved_model.tag_constants.SERVING], signature_def_map={"serving_default": signature}
        )
        builder.save()
    return out


def build_weights(size: str, work: Path, seq_len: int) -> dict:
    """WORK/hf (the weights), WORK/model (the user's TF SavedModel, inputs [None, S]), WORK/model_dynamic."""
    from bertc.model.export import export_model

    hf = write_hf_folder(size, work / "hf")
    summary = export_model("hf", hf, work / "model", seq_len=seq_len, num_labels=None, seed=0)
    save_dynamic_length(hf, work / "model_dynamic")
    return summary


def export_onnx_torch(hf_folder: Path, out: Path, opset: int) -> None:
    """PyTorch's ONNX export of the HF model, probabilities out, batch and sequence axes dynamic."""
    import torch
    from transformers import BertForSequenceClassification

    class Probabilities(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return torch.softmax(logits.logits, dim=-1)

    model = BertForSequenceClassification.from_pretrained(hf_folder, attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 16), dtype=torch.int64) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"probabilities": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            Probabilities(model),
            example,
            str(out),
            input_names=names,
            output_names=["probabilities"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def build_onnx(work: Path, heads: int, hidden: int, opset: int = 17, exporter: str = "auto") -> dict:
    """WORK/onnx/model.opt.onnx: PyTorch's export of the HF folder (exporter torch; auto when PyTorch and
    transformers are here) or tf2onnx's of the dynamic SavedModel (exporter tf2onnx), then onnxruntime's
    transformer optimizer; returns what it fused."""
    import subprocess

    from onnxruntime.transformers.optimizer import optimize_model

    folder = work / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "model.onnx"
    has_torch = bool(importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"))
    if exporter == "torch" or (exporter == "auto" and has_torch):
        export_onnx_torch(work / "hf", raw, opset)
        source, model_type = "torch.onnx.export of the HF model (dynamic batch and sequence)", "bert"
    else:
        command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(work / "model_dynamic")]
        command += ["--output", str(raw), "--signature_def", "serving_default", "--tag", "serve", "--opset", str(opset)]
        subprocess.run(command, check=True)
        source, model_type = "tf2onnx of the dynamic-length SavedModel", "bert_tf"
    # opt_level 0: the transformer fusions alone; the session applies onnxruntime's own graph
    # optimizations (ORT_ENABLE_ALL) when it loads the model.
    model = optimize_model(str(raw), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    fused = {key: int(value) for key, value in model.get_fused_operator_statistics().items() if value}
    model.save_model_to_file(str(folder / "model.opt.onnx"))
    quantize_int8(folder / "model.opt.onnx", folder / "model.int8.onnx")
    attention = any(key in fused for key in ("Attention", "MultiHeadAttention"))
    info = {"source": source, "model_type": model_type, "fused": fused, "attention_fused": attention}
    (folder / "fusion.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the optimized model (QAttention, MatMulInteger): weights int8,
    activations quantized per call. The fused operators carry no shape inference, hence the default type."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options=options)


def build_ct2(work: Path) -> None:
    """WORK/ct2: CTranslate2's converter on the HF folder (it loads the model with transformers and PyTorch)."""
    import ctranslate2

    ctranslate2.converters.TransformersConverter(str(work / "hf")).convert(str(work / "ct2"), quantization="float32")


def build_steps(work: Path, heads: int, hidden: int, opset: int, exporter: str) -> dict[str, dict]:
    """step -> how `python bench/peers.py` runs it (arguments), the file it leaves (product), the peers that load
    that file (peers) and whether the packages it needs are installed (installed)."""
    found = {name: importlib.util.find_spec(name) is not None for name in PACKAGES}
    torch = found["torch"] and found["transformers"]
    return {
        "onnx": {
            "arguments": ["onnx", str(work), str(heads), str(hidden), str(opset), exporter],
            "product": work / "onnx" / "fusion.json",
            "peers": ("onnxruntime", "onnxruntime_int8"),
            "installed": found["onnxruntime"] and found["onnx"] and (found["tf2onnx"] or torch),
        },
        "ct2": {
            "arguments": ["ct2", str(work)],
            "product": work / "ct2" / "model.bin",
            "peers": ("ctranslate2", "ctranslate2_int8"),
            "installed": found["ctranslate2"] and torch,
        },
    }


# ---- the systems, in the measuring process -------------------------------------------------------


class System:
    """One system: `prepare(feeds padded to S)` once, outside the timing; `__call__(prepared)` -> probabilities."""

    fed = FED_PADDED
    precision = "fp32"
    how = ""
    static_shape = False  # True: every call has the same shape, so one warm-up call warms them all
    bertc = False  # True: a bertc build, not a peer

    def prepare(self, feeds: dict):
        return cut_to_longest(feeds) if self.fed == FED_CUT else feeds

    def __call__(self, prepared) -> np.ndarray:
        raise NotImplementedError


def _input(feeds: dict, name: str) -> np.ndarray:
    """The value for a system's input `name` (or `name:0`): a BERT feed by any of its names, or for run_classifier's
    label_ids and is_real_example, which serving never reads, zeros and ones."""
    bare = name.split(":")[0]
    key = next((key for key, aliases in INPUT_ALIASES.items() if bare in aliases), None)
    if key is not None:
        return feeds[key]
    batch = len(feeds["input_ids"])
    return np.ones([batch], np.int32) if bare == "is_real_example" else np.zeros([batch], np.int32)


class TFSignature(System):
    """A TF1 SavedModel through its serving signature; label_ids and is_real_example fed neutral values."""

    def __init__(self, path: str, fed: str, how: str):
        import tensorflow as tf

        self._tf, self.fed, self.how = tf, fed, how
        self.static_shape = fed == FED_PADDED
        self._loaded = tf.saved_model.load(path, tags=["serve"])
        self._function = self._loaded.signatures["serving_default"]
        self._keys = list(self._function.structured_input_signature[1])

    def __call__(self, prepared) -> np.ndarray:
        tf, batch = self._tf, len(prepared["input_ids"])
        extra = {"label_ids": tf.zeros([batch], tf.int32), "is_real_example": tf.ones([batch], tf.int32)}
        arguments = {key: tf.constant(prepared[key]) if key in prepared else extra[key] for key in self._keys}
        return self._function(**arguments)["probabilities"].numpy()


class TFCompiled(System):
    """A bertc artifact through its serving signature, as it serves without bertc: a drop-in, fed padded to S."""

    bertc = True

    def __init__(self, path: str, how: str):
        import tensorflow as tf

        self._tf, self.how = tf, how
        self._loaded = tf.saved_model.load(path)
        self._function = self._loaded.signatures["serving_default"]

    def __call__(self, prepared) -> np.ndarray:
        arguments = {key: self._tf.constant(value) for key, value in prepared.items()}
        return self._function(**arguments)["probabilities"].numpy()


class OnnxCompiled(System):
    """A bertc target=onnxruntime artifact (model/model.onnx) in a plain onnxruntime CPU session with default
    options, as it serves without bertc: a drop-in, fed padded to S (its length rewrite cuts inside the graph)."""

    bertc = True

    def __init__(self, path: str, how: str):
        import onnxruntime as ort

        self.how = how
        self._session = ort.InferenceSession(str(Path(path) / "model.onnx"), providers=["CPUExecutionProvider"])

    def __call__(self, prepared) -> np.ndarray:
        feeds = {key: np.asarray(value, np.int32) for key, value in prepared.items()}
        return self._session.run(["probabilities"], feeds)[0]


class OrtModel(System):
    """An ONNX model in an onnxruntime CPU session, fed `[:, :L]` (its batch and sequence axes are dynamic)."""

    fed = FED_CUT

    def __init__(self, path: str, threads: int, spinning: str, how: str, precision: str = "fp32"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning != "default":
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
        self.how, self.precision = how, precision
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._inputs = [
            (item.name, np.int64 if "int64" in item.type else np.int32) for item in self._session.get_inputs()
        ]
        self._output = self._session.get_outputs()[0].name

    def prepare(self, feeds: dict) -> dict:
        cut = cut_to_longest(feeds)
        return {name: _input(cut, name).astype(dtype) for name, dtype in self._inputs}

    def __call__(self, prepared) -> np.ndarray:
        return self._session.run([self._output], prepared)[0]


class OpenVinoModel(System):
    """openvino.convert_model on the dynamic-length SavedModel, compiled for the CPU with f32 set explicitly
    (bf16 is OpenVINO's default on CPUs with bf16 instructions) and the latency hint; fed `[:, :L]`."""

    fed = FED_CUT

    def __init__(self, path: str, threads: int):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(ov.convert_model(path), "CPU", config)
        self.how = (
            f"convert_model(dynamic SavedModel), CPU, INFERENCE_PRECISION_HINT={config['INFERENCE_PRECISION_HINT']}"
        )
        self._inputs = [(port, next(iter(port.get_names()))) for port in compiled.inputs]
        self._output = next(
            port
            for port in compiled.outputs
            if any("probabilities" in name or "Softmax" in name for name in port.get_names())
        )
        self._request = compiled.create_infer_request()

    def prepare(self, feeds: dict) -> dict:
        cut = cut_to_longest(feeds)
        return {port: _input(cut, name) for port, name in self._inputs}

    def __call__(self, prepared) -> np.ndarray:
        return self._request.infer(prepared)[self._output].copy()


class Ct2Model(System):
    """ctranslate2.Encoder on the converted folder, fed one id list per row at its own length: the encoder pads
    the batch and, on CPU, removes the padding again inside. It returns the pooler output; the classifier
    (one [labels, H] matmul and a softmax) runs in numpy from the HF folder's weights."""

    fed = FED_ROWS

    def __init__(self, path: str, hf_folder: Path, compute_type: str, threads: int):
        import ctranslate2
        from safetensors.numpy import load_file

        self.precision = "int8" if compute_type.startswith("int8") else "fp32"
        self.how = f"ctranslate2 {ctranslate2.__version__} Encoder, compute_type={compute_type}"
        self._encoder = ctranslate2.Encoder(path, device="cpu", compute_type=compute_type, intra_threads=threads)
        tensors = load_file(str(hf_folder / "model.safetensors"))
        self._weight, self._bias = tensors["classifier.weight"].T.copy(), tensors["classifier.bias"]

    def prepare(self, feeds: dict) -> tuple[list, list]:
        lengths = row_lengths(feeds)
        ids = [row[:length].tolist() for row, length in zip(feeds["input_ids"], lengths, strict=True)]
        types = [row[:length].tolist() for row, length in zip(feeds["segment_ids"], lengths, strict=True)]
        return ids, types

    def __call__(self, prepared) -> np.ndarray:
        ids, types = prepared
        pooled = np.asarray(self._encoder.forward_batch(ids, token_type_ids=types).pooler_output)
        logits = pooled @ self._weight + self._bias
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)


class TorchModel(System):
    """Hugging Face BertForSequenceClassification in PyTorch eager, fp32, SDPA attention, inference mode;
    fed `[:, :L]` int64 tensors, as a tokenizer with a padding collator returns them."""

    fed = FED_CUT

    def __init__(self, hf_folder: Path, threads: int):
        import torch
        from transformers import BertForSequenceClassification

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._model = BertForSequenceClassification.from_pretrained(
            hf_folder, attn_implementation="sdpa", dtype=torch.float32
        ).eval()
        self.how = f"torch {torch.__version__} eager, fp32, attn_implementation=sdpa"

    def prepare(self, feeds: dict) -> dict:
        cut = cut_to_longest(feeds)
        names = {"input_ids": "input_ids", "attention_mask": "input_mask", "token_type_ids": "segment_ids"}
        return {name: self._torch.from_numpy(cut[key].astype(np.int64)) for name, key in names.items()}

    def __call__(self, prepared) -> np.ndarray:
        with self._torch.inference_mode():
            return self._torch.softmax(self._model(**prepared).logits, dim=-1).numpy()


# ---- loading each system in the measuring process ----------------------------------------------------


def load_compiled(path: str, how: str) -> System:
    """A bertc artifact: model.onnx (target=onnxruntime) in onnxruntime, else the SavedModel in TensorFlow."""
    engine = OnnxCompiled if (Path(path) / "model.onnx").is_file() else TFCompiled
    return engine(path, how)


def _tf_dynamic(work: Path, settings: dict) -> System:
    return TFSignature(str(work / "model_dynamic"), FED_CUT, "TF SavedModel, the same graph with [None, None] inputs")


def _onnxruntime(precision: str):
    def load(work: Path, settings: dict) -> System:
        require("onnxruntime", "onnx", hint="pip install '.[onnx]'")
        info = _built(work / "onnx" / "fusion.json", "onnx")
        fused = ", ".join(f"{key} {value}" for key, value in info["fused"].items()) or "nothing"
        how = f"{info['source']}; optimizer model_type={info['model_type']} fused {fused}"
        if precision == "int8":
            kernels = "QAttention, MatMulInteger" if info["attention_fused"] else "MatMulInteger"
            how, path = f"{how}; quantize_dynamic int8 ({kernels})", work / "onnx" / "model.int8.onnx"
        else:
            how, path = f"{how}; fp32", work / "onnx" / "model.opt.onnx"
        return OrtModel(str(path), settings["threads"], settings["ort_spinning"], how, precision)

    return load


def _openvino(work: Path, settings: dict) -> System:
    require("openvino", hint="pip install '.[bench]'")
    return OpenVinoModel(str(work / "model_dynamic"), settings["threads"])


def _ctranslate2(compute_type: str):
    def load(work: Path, settings: dict) -> System:
        require("ctranslate2", hint="pip install '.[peers]' and the CPU torch wheel: bench/README.md")
        _built(work / "ct2" / "model.bin", "ct2")
        return Ct2Model(str(work / "ct2"), work / "hf", compute_type, settings["threads"])

    return load


def _pytorch(work: Path, settings: dict) -> System:
    require("torch", "transformers", hint="pip install torch==2.13.0 (CPU wheel) '.[peers]': bench/README.md")
    return TorchModel(work / "hf", settings["threads"])


def _built(path: Path, step: str) -> dict:
    if not path.is_file():
        raise Missing(f"its build step failed or did not run: see {step}.log in the work folder")
    return json.loads(path.read_text()) if path.suffix == ".json" else {}


# name -> loader(work folder, settings) -> System; raises Missing when its package or its build is absent.
PEERS = {
    "tf_dynamic": _tf_dynamic,
    "onnxruntime": _onnxruntime("fp32"),
    "onnxruntime_int8": _onnxruntime("int8"),
    "openvino": _openvino,
    "ctranslate2": _ctranslate2("float32"),
    "ctranslate2_int8": _ctranslate2("int8"),
    "pytorch": _pytorch,
}


def main(argv: list[str]) -> int:
    step, *rest = argv
    if step == "weights":
        size, work, *seq = rest
        print(json.dumps(build_weights(size, Path(work), int(seq[0]) if seq else 128)))
    elif step == "onnx":
        work, heads, hidden, opset, exporter = rest
        print(json.dumps(build_onnx(Path(work), int(heads), int(hidden), int(opset), exporter)))
    elif step == "ct2":
        build_ct2(Path(rest[0]))
    else:
        raise SystemExit(f"unknown step {step!r}: weights, onnx or ct2")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
