"""Issue 23, item 4: every value a user can set is checked where it enters. The schema is walked and a bad value
tried for every key: on the command line bertc answers before Hydra (exit 2, one line naming the key, the value
and what is allowed), and a config composed another way (the API, a YAML file) is refused at the plan."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from bertc.__main__ import _answer_before_hydra
from bertc.driver.cli import CONF_DIR
from bertc.driver.config import root_schema
from bertc.driver.plan import build_plan
from bertc.driver.usage import options
from bertc.errors import ConfigError
from bertc.schema import CHOICES, RANGE

# Keys no declaration in bertc/driver/config.py bounds, and why. A new key must be declared (bounded, choice) or named
# here: the walk below fails on a key that is neither.
UNDECLARED = {
    "model.inputs": "signature keys: checked against the model's signature when it is read",
    "security.allow_ops": "op type names: checked against TensorFlow's registry before the model is read",
    "security.allow_unrecognised": "fnmatch patterns of node names: any text is a pattern",
    "precision.name": "a label for reports",
    "precision.rules": "each rule's dtype and role are choices, checked at the plan",
    # pass parameters (bertc/passes/*): a pass declares its own; not declared there yet
    "removal.ops": "pass parameter: op names and patterns, matched by the removal pass",
}


def leaf_keys() -> dict[str, tuple[dataclasses.Field, typing.Any]]:
    """Every key a user can set -> (its schema field, its type), walked from the root schema."""
    keys = {}
    for field in dataclasses.fields(root_schema()):
        if dataclasses.is_dataclass(field.type):
            keys.update({f"{field.name}.{inner.name}": (inner, inner.type) for inner in dataclasses.fields(field.type)})
        else:
            keys[field.name] = (field, field.type)
    return keys


def _kind(hint):
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    return _kind(arguments[0]) if typing.get_origin(hint) in (typing.Union, list) else hint


def bad_values(field: dataclasses.Field, hint) -> list[str]:
    """Values of the wrong type, outside the declared range or not among the declared choices."""
    bounds, choices, kind = field.metadata.get(RANGE), field.metadata.get(CHOICES), _kind(hint)
    if typing.get_origin(hint) is list:
        below = [f"[{bounds.low - 1}]"] if bounds and bounds.low is not None else []
        return (["[]"] if bounds and bounds.filled else []) + below
    values = {bool: ["maybe"], int: ["abc", "1.5"], float: ["abc"]}.get(kind, [])
    values += ["no_such_choice"] if choices else []
    if bounds is not None:
        values += [""] if bounds.filled else []
        values += [str(bounds.low if bounds.above else bounds.low - 1)] if bounds.low is not None else []
        if bounds.high is not None:
            values += [str(bounds.high * 2 if kind is float and bounds.high > 0 else bounds.high + 1)]
    return values


def probes() -> list[tuple[str, str]]:
    return [(key, value) for key, (field, hint) in leaf_keys().items() for value in bad_values(field, hint)]


def test_every_key_is_declared_or_named_with_a_reason():
    bare = {
        key
        for key, (field, hint) in leaf_keys().items()
        if hint is not bool and RANGE not in field.metadata and CHOICES not in field.metadata
    }
    assert bare == set(UNDECLARED), "declare a range or choices (bertc/driver/config.py), or name the key in UNDECLARED"
    assert len(probes()) > 60  # the walk reaches every group


def plan_error(*overrides: str) -> str:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    with pytest.raises(ConfigError) as refused:
        build_plan(cfg)
    return str(refused.value)


@pytest.mark.parametrize("key, value", probes())
def test_a_bad_value_is_refused_in_one_line_before_hydra(key, value, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written; a default run folder would land here
    code = _answer_before_hydra([f"{key}={value}"])
    if value.startswith("["):  # lists are Hydra's to parse: refused at the plan, naming the key
        assert code is None
        assert f"{key}={value}" in plan_error(f"{key}={value}")
        return
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{key}={value!r}" in err or f"{key}={value}" in err, err
    assert "allowed is" in err or "choose one of" in err, err
    assert "HYDRA_FULL_ERROR" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


IN_TYPE = [(key, value) for key, value in probes() if value not in ("abc", "1.5", "maybe")]


def wrong_shapes() -> list[tuple[str, str]]:
    """A list or a mapping for each scalar key, a plain value for each list or mapping key."""
    shapes = []
    for key, (_, hint) in leaf_keys().items():
        arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        plain = arguments[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
        if typing.get_origin(plain) in (list, tuple, dict):
            shapes.append((key, "5"))
        elif plain in (bool, int, float, str):
            shapes += [(key, "[1]"), (key, "{a: 1}")]
    return shapes


@pytest.mark.parametrize("key, value", wrong_shapes())
def test_a_value_of_the_wrong_shape_is_refused_in_one_line_before_hydra(key, value, capsys, tmp_path, monkeypatch):
    """Hydra's own message for these is a schema dump with its HYDRA_FULL_ERROR hint."""
    monkeypatch.chdir(tmp_path)
    code = _answer_before_hydra([f"{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{key}={value}" in err and ("allowed is" in err or "is not a list" in err or "is not a mapping" in err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, value", [probe for probe in IN_TYPE if not probe[1].startswith("[")])
def test_a_value_out_of_range_is_refused_at_the_plan_too(key, value):
    """What the API and YAML files give (no command line to check) is refused when the plan is built."""
    message = plan_error(f"{key}={value}")
    assert f"{key}=" in message and any(word in message for word in ("out of range", "allowed", "choose one of"))


@pytest.mark.parametrize("group", ["model", "target", "verify", "bench", "length", "precision", "partition", "mask"])
def test_every_shipped_option_is_within_the_declared_ranges(group):
    for option in options(Path(CONF_DIR), group):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            build_plan(compose("config", overrides=[f"{group}={option}"]))


ISSUE_CASES = [
    (["target.intra_op_threads=2147483647"], "target.intra_op_threads=2147483647"),  # SIGSEGV before
    (["model.path="], "model.path= is empty"),  # ran the demo before
    (["model=tiny", "model.num_labels=0"], "model.num_labels=0"),  # silently 2 before
    (["bench=quick", "bench.rounds=0"], "bench.rounds=0"),  # a traceback before
    (["verify.seed=-1"], "verify.seed=-1"),  # a traceback before
    # Hydra's own message before, with its HYDRA_FULL_ERROR hint:
    (["overwrite=maybe"], "overwrite='maybe' is not a valid bool: allowed is true or false"),
    (["verify.batches=four"], "verify.batches='four' is not a valid integer: allowed is an integer from 1"),
    (["verify.batch_size=[1]"], "verify.batch_size=[1] is a list: allowed is an integer"),
    (["model.inputs=5"], "model.inputs=5 is not a mapping"),
]


@pytest.mark.parametrize("overrides, words", ISSUE_CASES, ids=[case[0][-1] for case in ISSUE_CASES])
def test_the_issue_cases_exit_2_with_one_line(overrides, words, tmp_path):
    run_dir = tmp_path / "run"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "bertc", *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=600,
    )
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not run_dir.exists()
