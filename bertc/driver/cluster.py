"""A sweep's jobs -> Ray tasks on the nodes of a cluster -> one summary record per job back on the driver.

`hydra/launcher=ray` (conf/hydra/launcher/ray.yaml, hydra_plugins/bertc_ray_launcher): Hydra's Ray
launcher (hydra-ray-launcher runs each job on its node) with what bertc needs on a cluster. A job's
run folder stays on its node; the job's return value that Hydra carries back through Ray is its
record (bertc/run/sweep.py `job_record`: status, numbers, node, folder), so the driver writes the
summary without reading job folders. The driver's digest of each input model is checked on the node
before the job runs: a node that holds another file (a stale cache, a different copy) fails that job
with the reason instead of compiling something else. A job whose worker or node dies is a failed
record with Ray's reason and the sweep goes on; Ctrl-C cancels the jobs still running. Quirks
handled: the plugin always passes object_store_memory to ray.init, which Ray >= 2.11 refuses when
joining a cluster; a job that asks for more than any node has would wait forever, so it is refused.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from bertc.errors import ConfigError, first_line

try:
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job as run_hydra_job
except ImportError as missing:
    raise ImportError(
        f"hydra/launcher=ray needs bertc's ray extra, which is not installed here ({missing}): "
        "pip install 'bertc[ray]' (hydra-ray-launcher and ray[default]) on the driver and on every node."
    ) from None

LOCAL_OBJECT_STORE = 78_643_200  # bytes: the plugin's default for a Ray started here (records are small)
CLUSTER_OWNED = ("object_store_memory",)  # set by `ray start` on each node; Ray >= 2.11 refuses them from a driver
CANCEL_GRACE_S = 10.0  # after Ctrl-C: time for the jobs to record themselves interrupted before they are killed


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The sweep's jobs on the cluster (launcher: hydra_plugins/bertc_ray_launcher's, set up by Hydra)."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    from bertc.run.sweep import keep_records

    setup_globals()
    connect(launcher.ray_cfg.init)
    options = set_values(launcher.ray_cfg.remote)
    check_resources(options)
    configs = [
        job_config(launcher, overrides, initial_job_idx + index) for index, overrides in enumerate(job_overrides)
    ]
    expected = reference_digests(configs) if launcher.check_inputs else {}
    task = ray.remote(**options)(run_on_node) if options else ray.remote(run_on_node)
    context, state = ray.put(launcher.hydra_context), ray.put(Singleton.get_state())
    refs = [
        task.remote(context, config, launcher.task_function, state, expected.get(model_key(config)))
        for config in configs
    ]
    returns = collect(refs, configs, initial_job_idx + len(configs))
    keep_records(Path(str(launcher.config.hydra.sweep.dir)), [job_return.return_value for job_return in returns])
    return returns


def set_values(node: DictConfig) -> dict[str, Any]:
    """A config mapping as keyword arguments for Ray, its null (unset) values left out."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return {str(key): value for key, value in values.items() if value is not None}


def job_config(launcher: Any, overrides: Sequence[str], number: int) -> DictConfig:
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"job_id_for_{number}"  # as hydra-ray-launcher names it
        config.hydra.job.num = number
    return config


def connect(init_cfg: DictConfig) -> None:
    """Start Ray here (no address) or join the cluster at `address`; the plugin's defaults fixed for joining."""
    if ray.is_initialized():
        return
    init = set_values(init_cfg)
    address = init.get("address") or os.environ.get("RAY_ADDRESS")  # ray.init reads RAY_ADDRESS itself
    if address and address != "local":
        for key in CLUSTER_OWNED:
            if init.pop(key, None) is not None:
                print(
                    f"ray: {key} is the cluster's (ray start sets it on each node); not passed when joining {address}"
                )
    else:
        init.setdefault("object_store_memory", LOCAL_OBJECT_STORE)
    try:
        ray.init(**init)
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"join the Ray cluster at {address}" if address else "start Ray on this machine"
        raise ConfigError(
            f"hydra/launcher=ray could not {where}: {first_line(error)}. Check that the head runs (`ray status` "
            "there), that hydra.launcher.ray.init.address=HOST:PORT names it, and that this machine has the "
            "cluster's token (RAY_AUTH_TOKEN_PATH) when it uses token authentication."
        ) from None


def check_resources(options: dict[str, Any]) -> None:
    """Refuse a job that no node could run: Ray would keep it waiting forever."""
    need = {"CPU": options.get("num_cpus", 1), "memory": options.get("memory"), **(options.get("resources") or {})}
    need = {name: amount for name, amount in need.items() if amount}
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(all(resources.get(name, 0) >= amount for name, amount in need.items()) for resources in nodes):
        return
    have = "; ".join(", ".join(f"{name} {resources.get(name, 0):g}" for name in need) for resources in nodes)
    raise ConfigError(
        f"no node of the Ray cluster has what one job asks for ({', '.join(f'{k} {v:g}' for k, v in need.items())}; "
        f"the nodes have: {have or 'no live node'}). Lower hydra.launcher.ray.remote.num_cpus or .memory "
        "(memory is in bytes), or add a node that has it."
    )


def model_key(config: DictConfig) -> str:
    return json.dumps(OmegaConf.to_container(config.model, resolve=True), sort_keys=True)


def input_digest(model: DictConfig, log=lambda line: None) -> tuple[str, Path]:
    """The input model materialized on this machine (exported into its cache if needed) and its digest."""
    from bertc.driver.config import ModelInput
    from bertc.driver.materialize import materialize
    from bertc.frontends.load import model_digest
    from bertc.schema import from_config

    path = materialize(from_config(ModelInput, model, "model"), log)
    return model_digest(path), path


def reference_digests(configs: list[DictConfig]) -> dict[str, str]:
    """model config -> its digest as the driver reads it; an input the driver cannot read is not checked."""
    digests: dict[str, str] = {}
    unreadable: set[str] = set()
    for config in configs:
        key = model_key(config)
        if key in digests or key in unreadable:
            continue
        try:
            digests[key], path = input_digest(config.model, lambda line: print(f"driver: {line}", flush=True))
        except Exception as error:  # noqa: BLE001  (the job reports its own input's fault on its node)
            unreadable.add(key)
            print(
                f"driver: input {config.model.name} not checked on the nodes: not readable here ({first_line(error)})"
            )
            continue
        print(
            f"driver: input {config.model.name} {path} digest {digests[key][:23]}...: checked on each node", flush=True
        )
    return digests


def run_on_node(
    hydra_context: Any, config: DictConfig, task_function: Any, singleton_state: Any, expected: str | None
) -> JobReturn:
    """On the node: the input checked, the job run as Hydra runs it, its return value replaced by its record."""
    from bertc.run.sweep import job_record

    job_dir = job_folder(config)
    problem = input_problem(config.model, expected) if expected else None
    if problem:
        job_return = refuse_job(config, job_dir, problem)
    else:
        job_return = run_hydra_job(hydra_context, config, task_function, singleton_state)
    record = {**job_record(job_dir, list(config.hydra.overrides.task)), **node_identity()}
    if job_return.status != JobStatus.COMPLETED:  # the task function raised past bertc's own guard
        record.update(status="failed", reason=f"the job raised: {first_line(job_return._return_value)}")
    job_return.status, job_return.return_value = JobStatus.COMPLETED, record
    return job_return


def job_folder(config: DictConfig) -> Path:
    """The job's run folder on this node, as Hydra's run_job names it (a relative sweep dir: the worker's cwd)."""
    sweep = OmegaConf.select(config, "hydra.sweep.dir")
    return Path(os.path.abspath(Path(str(sweep)) / str(OmegaConf.select(config, "hydra.sweep.subdir"))))


def node_identity() -> dict[str, str]:
    return {"node": socket.gethostname(), "ray_node": ray.get_runtime_context().get_node_id()}


def input_problem(model: DictConfig, expected: str) -> str | None:
    """Why this node must not compile the job's input (its copy differs from the driver's), or None."""
    try:
        digest, path = input_digest(model)
    except Exception:  # noqa: BLE001  (an input the job cannot read: the job itself says why, in its report)
        return None
    if digest == expected:
        return None
    return (
        f"this node holds a different file, so the job was not compiled: digest {digest[:23]}... here, "
        f"{expected[:23]}... on the driver, for input {model.name} at {path} on {socket.gethostname()}. Make the "
        "copies the same (model.path on shared storage, or delete this node's stale bertc cache entry)."
    )


def refuse_job(config: DictConfig, job_dir: Path, problem: str) -> JobReturn:
    """The job's folder gets a failed report.json saying why it was not run."""
    from bertc.run.report import write_reports

    job_dir.mkdir(parents=True, exist_ok=True)
    write_reports(job_dir, {"status": "failed", "failed_step": "input", "error": problem, "steps": []})
    print(f"error: {problem}", flush=True)
    return JobReturn(overrides=list(config.hydra.overrides.task), cfg=config, status=JobStatus.COMPLETED)


def collect(refs: list, configs: list[DictConfig], total: int) -> list[JobReturn]:
    """Each job's JobReturn as it finishes (a dead worker or node: a failed record); Ctrl-C cancels the rest."""
    position = {ref: index for index, ref in enumerate(refs)}
    returns: dict[int, JobReturn] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)  # a second at most: Ctrl-C is seen
            for ref in done:
                index = position[ref]
                returns[index] = finished(ref, configs[index])
                print(finished_line(returns[index].return_value, total), flush=True)
    except KeyboardInterrupt:
        cancel(pending)
        raise
    return [returns[index] for index in range(len(refs))]


def finished(ref: Any, config: DictConfig) -> JobReturn:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:  # the worker or its node died, or the task was cancelled
        from bertc.run.sweep import FIELDS

        record = dict.fromkeys(FIELDS, "")
        record.update(
            job=str(config.hydra.job.num),
            overrides=" ".join(config.hydra.overrides.task),
            status="failed",
            ray_node=_named_node(str(error)),
            reason=f"lost on the cluster ({type(error).__name__}): {' '.join(str(error).split())}"[:300],
            folder=str(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)),  # as its node names it
        )
        return JobReturn(
            overrides=list(config.hydra.overrides.task), cfg=config, status=JobStatus.COMPLETED, _return_value=record
        )


def _named_node(message: str) -> str:
    """The Ray node id a NodeDiedError's message names (the node is gone: nothing else says which it was)."""
    match = re.search(r"node ID: ([0-9a-f]{16,})", message)
    return match.group(1) if match else ""


def finished_line(record: dict[str, Any], total: int) -> str:
    node = record["node"] or "a node that died"
    ray_node = f" (ray node {record['ray_node'][:8]})" if record["ray_node"] else ""
    return f"job {int(record['job']) + 1}/{total} {record['status']} on {node}{ray_node}: {record['folder']}"


def cancel(pending: list) -> None:
    """Ctrl-C on the driver: each job gets KeyboardInterrupt (bertc records it), then the stragglers are killed."""
    print(f"sweep interrupted: cancelling {len(pending)} job(s) still running or waiting", file=sys.stderr, flush=True)
    for ref in pending:
        ray.cancel(ref)
    _, stragglers = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
    for ref in stragglers:
        ray.cancel(ref, force=True)
