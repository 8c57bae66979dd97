"""The config surface and the plan: composition of the real configs, canonical order, typed checks,
golden printed plans, and a fingerprint that moves with the artifact's inputs and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from support.compile import compose_config

from bertc.driver.plan import STEP_ORDER, build_plan, fingerprint
from bertc.errors import ConfigError

GOLDEN = Path(__file__).parents[1] / "golden" / "plans.txt"
PRESET_RUNS = [
    [],
    ["precision=mixed", "partition=cpu_embed"],
    ["precision=mixed_bf16", "partition=cpu_embed", "target=xla"],
    ["removal=none", "mask=original", "precision=fp32"],
    ["model=tiny", "mask.fold_scale=true", "bench=off", "verify=off"],
]


def test_default_plan_runs_steps_in_canonical_order():
    plan = build_plan(compose_config(["precision=mixed", "partition=cpu_embed", "gelu=exact", "length=trim"]))
    assert [step.name for step in plan.steps] == [name for _, name in STEP_ORDER]
    assert plan.model.kind == "preset" and plan.model.size == "mini"


def test_mixed_bf16_is_the_mixed_map_in_bfloat16():
    mixed = build_plan(compose_config(["precision=mixed"])).steps[2].params.rules
    bf16 = build_plan(compose_config(["precision=mixed_bf16"])).steps[2].params.rules
    assert [r.scope for r in mixed] == [r.scope for r in bf16]
    assert {r.dtype for r in mixed} == {"float32", "float16"} and {r.dtype for r in bf16} == {"float32", "bfloat16"}
    overridden = build_plan(compose_config(["precision=mixed", "precision.dtype=bfloat16"])).steps[2].params.rules
    assert overridden == bf16


def test_printed_plans_match_golden_file():
    text = (
        "\n\n".join(
            "$ python -m bertc "
            + " ".join(overrides)
            + "\n"
            + "\n".join(build_plan(compose_config(overrides)).describe())
            for overrides in PRESET_RUNS
        )
        + "\n"
    )
    if os.environ.get("BERTC_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "printed plans changed; rerun with BERTC_UPDATE_GOLDEN=1 if intended"


def test_schema_rejects_wrong_types_and_unknown_keys():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config(["mask.fold_scale=maybe"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["mask.no_such_option=1"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["precision=fp8"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["target.name=tpu"], "target.name='tpu' is not valid"),
        (["target.device=npu"], "target.device='npu'"),
        (["mask.mode=sometimes"], "mask.mode"),
        (["precision=mixed", "precision.dtype=float8"], "precision.dtype='float8' is not valid"),
        (["shape.batch_size=0"], "shape.batch_size"),
        (["bench.batch_sizes=[]"], "bench.batch_sizes"),
    ],
)
def test_bad_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_plan(compose_config(overrides))


def test_fingerprint_moves_with_artifact_inputs_only():
    versions = {"bertc": "0.1.0", "tensorflow": "2.21.0"}
    base = build_plan(compose_config([]))
    same = build_plan(compose_config(["bench=off", "verify.batches=9", "hydra.run.dir=/elsewhere"]))
    assert fingerprint(base, "sha256:a", versions) == fingerprint(same, "sha256:a", versions)
    assert fingerprint(base, "sha256:a", versions) != fingerprint(base, "sha256:b", versions)
    assert fingerprint(base, "sha256:a", versions) != fingerprint(
        base, "sha256:a", {**versions, "tensorflow": "2.20.0"}
    )
    changed = build_plan(compose_config(["mask.fold_scale=true"]))
    assert fingerprint(base, "sha256:a", versions) != fingerprint(changed, "sha256:a", versions)
