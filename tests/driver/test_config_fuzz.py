"""Property: any set of overrides, valid or not, either builds a plan or fails with a clean error."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from bertc.driver.cli import CONF_DIR
from bertc.driver.plan import Plan, build_plan, fingerprint
from bertc.errors import UserError

OVERRIDES = [
    # valid choices and values
    "precision=fp32",
    "precision=mixed",
    "precision=mixed_bf16",
    "partition=none",
    "partition=cpu_embed",
    "mask=reimpl",
    "mask=original",
    "removal=training",
    "removal=none",
    "target=tf",
    "target=xla",
    "target=neuron",
    "mask.fold_scale=true",
    "mask.bias_value=-1e9",
    "shape.batch_size=4",
    "bench=off",
    "bench=quick",
    "verify=off",
    "verify.tolerance=0.1",
    "removal.ops=[Identity]",
    "precision.dtype=bfloat16",
    "model=tiny",
    "model=minilm",
    "target.device=cpu",
    "security.allow_ops=[PrintV2]",
    "partition.boundaries=[bert/pooler/dense/BiasAdd:0]",
    # invalid values, keys and types
    "shape.batch_size=0",
    "shape.batch_size=-1",
    "removal.ops=[Bogus]",
    "precision.dtype=float8",
    "target.device=npu",
    "partition.boundaries=[]",
    "verify.batches=0",
    "bench.batch_sizes=[]",
    "mask.fold_scale=maybe",
    "nosuchkey=1",
    "precision=fp8",
    "mask.bias_value=abc",
    "shape.seq_len=-5",
    "mask.mode=sometimes",
    "target.name=tpu",
    "precision.rules=[{scope: x, dtype: float16}]",
    "precision.rules=[{nope: 1}]",
    "model.seq_len=many",
    "bench.batch_sizes=[0]",
    "+extra=1",
    "~mask",
    "model.path=null",
    "verify.dataset=/no/such.tsv",
]
CLEAN = (HydraException, OmegaConfBaseException, UserError)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(OVERRIDES), max_size=5, unique=True))
def test_overrides_build_a_plan_or_fail_cleanly(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            cfg = compose("config", overrides=overrides)
        except CLEAN:
            return
    try:
        plan = build_plan(cfg)
    except CLEAN:
        return
    assert isinstance(plan, Plan)
    assert plan.describe() and fingerprint(plan, "sha256:x", {"tensorflow": "2.21.0"}).startswith("sha256:")
