"""A target is one module plus its YAML: a throwaway one whose artifact is an .npz of the weights served by a
NumPy forward pass (tests/support/numpy_bert.py, no TensorFlow) compiles, verifies and benchmarks end to end."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from rich.console import Console
from support.numpy_bert import forward, from_google

from bertc import targets
from bertc.driver.cli import CONF_DIR
from bertc.driver.config import register_configs
from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.targets.base import BaseTarget, TargetOptions


class NpzArtifact:
    """The rewritten graph's weights in weights.npz and the head count in shape.json; served by NumPy."""

    def __init__(self, weights: Mapping[str, np.ndarray], heads: int, compress: bool):
        self.weights, self.heads, self.compress = dict(weights), heads, compress

    def warm_up(self, batch_size: int, seq_len: int) -> None:
        return None  # nothing to compile

    def save(self, path: Path) -> None:
        path.mkdir(parents=True)
        write = np.savez_compressed if self.compress else np.savez
        write(path / "weights.npz", **{name.replace("/", "|"): value for name, value in self.weights.items()})
        (path / "shape.json").write_text(json.dumps({"heads": self.heads}))
        self.weights = {}

    def open(self, path: Path, served=None):
        with np.load(path / "weights.npz") as stored:
            weights = {name.replace("|", "/"): stored[name] for name in stored.files}
        model = from_google(weights, json.loads((path / "shape.json").read_text())["heads"])

        def run(feeds):
            out = forward(model, feeds["input_ids"], feeds["input_mask"], feeds["segment_ids"])
            return {key: np.asarray(out[key], np.float32) for key in ("probabilities", "logits")}

        return run

    def describe(self, path: Path, run_dir: Path, label: str, user: Mapping) -> dict:
        return {"files": sorted(file.name for file in path.iterdir()), "how": "numpy_bert.forward over weights.npz"}


@dataclasses.dataclass(frozen=True)
class NumpyParams:
    compress: bool = False  # target.compress: weights.npz compressed


class NumpyTarget(BaseTarget):
    name = "numpy"
    params = NumpyParams

    def engine_versions(self, quantize: str = "") -> dict[str, str]:
        return {"numpy": np.__version__}

    def lower(self, graph, options: TargetOptions) -> NpzArtifact:
        return NpzArtifact(graph.weights, int(options.model_shape["heads"]), options.params.compress)


@pytest.fixture
def numpy_target(tmp_path):
    """The target registered, and its one YAML option in a config folder of its own on Hydra's search path."""
    (tmp_path / "conf" / "target").mkdir(parents=True)
    (tmp_path / "conf" / "target" / "numpy.yaml").write_text("name: numpy\ndevice: cpu\ncompress: true\n")
    targets.register(NumpyTarget())
    register_configs()  # its key joins the target group's schema
    yield tmp_path / "conf"
    targets.unregister("numpy")
    register_configs()


def test_a_target_in_one_module_with_one_yaml_compiles_verifies_and_benchmarks(numpy_target, tiny_model_dir, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = [f"hydra.searchpath=[file://{numpy_target}]", f"model.path={tiny_model_dir}", "target=numpy"]
        cfg = compose("config", overrides=[*overrides, "bench=quick", "bench.batch_sizes=[1,2]"])
    plan = build_plan(cfg)
    assert plan.target.params == NumpyParams(compress=True)  # from its YAML
    code = compile_run(plan, tmp_path / "run", Console(file=io.StringIO()))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0, report.get("error")
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["plan"]["target"]["compress"] is True
    assert report["target"]["name"] == "numpy" and report["parity"]["passed"]
    assert report["parity"]["max_abs_diff"] < 1e-5 and report["parity"]["examples"] == 32
    assert report["bench"]["speedup"] > 0  # measured against the original in the same process
    assert report["serving"] == {"files": ["shape.json", "weights.npz"], "how": "numpy_bert.forward over weights.npz"}
    assert (tmp_path / "run" / "model" / "weights.npz").is_file() and not (tmp_path / "run" / "serving").exists()


def test_an_unknown_target_lists_the_registered_ones(numpy_target, tmp_path):
    from bertc.driver.config import TargetConf
    from bertc.errors import ConfigError
    from bertc.schema import CHOICES, check_choice

    field = next(field for field in TargetConf.__dataclass_fields__.values() if field.name == "name")
    assert check_choice("numpy", field.metadata[CHOICES], "target.name") == "numpy"
    with pytest.raises(ConfigError, match="choose one of: tf, xla, neuron, stablehlo, onnxruntime, openvino, numpy"):
        check_choice("onnx", field.metadata[CHOICES], "target.name")


def test_every_target_is_read_without_tensorflow():
    """The plan reads the targets' declarations (their keys, the length modes they take) before anything compiles,
    and `bertc --help` builds the config schema from them: their modules leave TensorFlow to the compile."""
    code = (
        "import sys; from bertc import targets; [targets.get(name) for name in targets.TARGETS]; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'tensorflow'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
