"""A real Ray cluster on this machine -> sweeps through hydra/launcher=ray: records back, both nodes used, failures.

The fast tests first (the config, the launcher's quirks, a summary from records alone); the cluster tests
are `slow` (.ci/run runs them: 3 to 4 minutes on 2 cores).

The head and a second node are separate `ray start` processes, each with its own temp dir, working
dir (a job's relative run folder lands there, where the other node and the driver never look) and
bertc cache; the driver runs from a third folder. Checked: every job of a 2x2 sweep ran, on both
nodes, and the driver's summary holds all four records though it has none of the job folders; a
node whose cached input differs from the driver's fails its job with the reason; a job whose node
dies is a failed row and the sweep finishes with the other row. The cluster is stopped, always.
"""

from __future__ import annotations

import csv
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'bertc[ray]'")
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")

START_TIMEOUT_S = 120
SWEEP_TIMEOUT_S = 600
TINY = "models/tiny-t128-l2-s0-f3"  # the tiny preset's cache entry (bertc/driver/materialize.py's key)


def test_the_ray_launcher_config_is_bertcs_and_composes_without_hydras_schema_warning():
    import warnings

    from hydra import compose, initialize_config_dir

    from bertc.driver.cli import CONF_DIR

    with warnings.catch_warnings(record=True) as caught, initialize_config_dir(CONF_DIR, version_base="1.3"):
        warnings.simplefilter("always")
        config = compose("config", ["hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=4"], True)
    launcher = config.hydra.launcher
    assert launcher._target_ == "hydra_plugins.bertc_ray_launcher.ray_launcher.BertcRayLauncher"
    assert launcher.check_inputs is True and launcher.ray.remote.num_cpus == 4 and launcher.ray.remote.max_retries == 0
    assert not [warning for warning in caught if "schema" in str(warning.message)]
    from hydra.core.plugins import Plugins

    assert Plugins.instance()._instantiate(launcher).check_inputs is True  # Hydra accepts it as a launcher plugin


def test_joining_a_cluster_drops_object_store_memory_and_a_local_ray_gets_a_small_one(monkeypatch):
    from omegaconf import OmegaConf

    from bertc.driver import cluster

    calls = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster.connect(OmegaConf.create({"address": "10.0.0.1:6379", "object_store_memory": 10**9}))
    cluster.connect(OmegaConf.create({"address": None, "object_store_memory": None}))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # ray.init joins $RAY_ADDRESS itself
    cluster.connect(OmegaConf.create({"address": None, "object_store_memory": None}))
    assert calls == [{"address": "10.0.0.1:6379"}, {"object_store_memory": cluster.LOCAL_OBJECT_STORE}, {}]


def test_a_job_no_node_can_hold_is_refused_before_it_waits_forever(monkeypatch):
    from bertc.driver import cluster
    from bertc.errors import ConfigError

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 4e9}}, {"Alive": False, "Resources": {"CPU": 64.0}}]
    monkeypatch.setattr(cluster.ray, "nodes", lambda: nodes)
    cluster.check_resources({"num_cpus": 2, "memory": 3e9})
    with pytest.raises(ConfigError, match=r"no node of the Ray cluster has .*CPU 4.*the nodes have: CPU 2"):
        cluster.check_resources({"num_cpus": 4})


def test_the_summary_is_written_from_records_alone(tmp_path):
    from bertc.run.sweep import FIELDS, summarize

    records = []
    for job, node in ((1, "b"), (0, "a")):
        record = dict.fromkeys(FIELDS, "")
        record.update(
            job=str(job),
            overrides=f"precision=p{job}",
            status="passed",
            node=node,
            ray_node=node * 8,
            folder=f"/scratch/{node}/{job}",
        )
        records.append(record)
    rows = summarize(tmp_path, parallel=True, records=records)  # no job folder here: the records are all it has
    assert [row["job"] for row in rows] == ["0", "1"]
    with open(tmp_path / "summary.csv") as stream:
        table = list(csv.DictReader(stream))
    assert [(row["node"], row["folder"]) for row in table] == [("a", "/scratch/a/0"), ("b", "/scratch/b/1")]
    summary_md = (tmp_path / "summary.md").read_text()
    assert "Jobs ran on 2 nodes: a (aaaaaaaa), b (bbbbbbbb)" in summary_md
    assert "[0]" not in summary_md  # no job folder here: nothing to link
    (tmp_path / "0").mkdir()  # the sweep folder on shared storage: job 0's folder is seen from the driver
    (tmp_path / "0" / "report.md").write_text("# job 0\n")
    records[1]["folder"] = str(tmp_path / "0")
    summarize(tmp_path, parallel=True, records=records)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    assert any(line.startswith("| [0](0/report.md) |") for line in lines)
    assert any(line.startswith("| 1 |") for line in lines)


@dataclass
class Node:
    name: str
    workdir: Path  # the node's working dir: jobs' relative run folders land here
    cache: Path  # the node's own bertc cache
    process: subprocess.Popen
    log: Path
    temp: Path  # Ray's temp dir for this node


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _ports() -> list[str]:
    """Every port a node opens, chosen free: two nodes on one machine must not collide on Ray's defaults."""
    names = ("node-manager", "object-manager", "metrics-export", "dashboard-agent-listen", "dashboard-agent-grpc")
    return [f"--{name}-port={_free_port()}" for name in (*names, "runtime-env-agent")]


def _start_node(name: str, root: Path, env: dict, extra: list[str]) -> Node:
    workdir, cache, log = root / name, root / name / "cache", root / f"{name}.log"
    workdir.mkdir()
    temp = tempfile.mkdtemp(prefix=f"br{name[0]}")  # short: Ray's socket paths must fit 107 characters
    command = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--block",
        f"--temp-dir={temp}",
        "--num-cpus=1",
        "--object-store-memory=78643200",
        "--disable-usage-stats",
        *_ports(),
        *extra,
    ]
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env={**env, "BERTC_CACHE": str(cache)},
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the teardown ends exactly these processes
        )
    return Node(name, workdir, cache, process, log, Path(temp))


def _wait_started(node: Node) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in node.log.read_text():
        if node.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start for the {node.name} did not come up:\n{node.log.read_text()[-3000:]}")
        time.sleep(0.5)


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Ray's workers leave its process group), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _raylet_pid(node: Node) -> int:
    for pid in _descendants(node.process.pid):
        try:
            if b"raylet/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no raylet under the {node.name}'s ray start")


def _stop(node: Node) -> None:
    """SIGKILL to the node's ray start, its process group and every process below it (by pid)."""
    pids = _descendants(node.process.pid)
    try:
        os.killpg(node.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.process.wait(timeout=30)
    shutil.rmtree(node.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    # Ray >= 2.5x authenticates with a token: the nodes and the driver share it, as on a real cluster.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = f"{ray.util.get_node_ip_address()}:{_free_port()}"  # the address Ray itself picks for the head
    nodes: list[Node] = []
    try:
        head_flags = ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"]
        head_flags += [f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}"]
        nodes.append(_start_node("head", root, env, head_flags))
        _wait_started(nodes[0])
        nodes.append(_start_node("worker", root, env, [f"--address={address}"]))
        _wait_started(nodes[1])
        driver = root / "driver"
        driver.mkdir()
        # the driver runs on the head machine: it shares the head's cache, not its working dir
        yield {
            "address": address,
            "head": nodes[0],
            "worker": nodes[1],
            "driver": driver,
            "env": {**env, "BERTC_CACHE": str(nodes[0].cache)},
        }
    finally:
        for node in nodes:
            _stop(node)


def _sweep_command(cluster, sweep: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bertc",
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={cluster['address']}",
        "model=tiny",
        "bench=off",
        f"hydra.sweep.dir=outputs/{sweep}",  # relative: each node's working dir, the driver's for the summary
        *overrides,
    ]


def _sweep(cluster, sweep: str, *overrides: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    result = subprocess.run(
        _sweep_command(cluster, sweep, *overrides),
        cwd=cluster["driver"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    return result, _summary(cluster, sweep, result.stdout + result.stderr)


def _sweep_begun(cluster, name: str, sweep: Path) -> subprocess.Popen:
    """A two-job sweep (fp32, mixed_bf16) started from the driver, returned once a job has begun (its folder under
    `sweep` holds resolved.yaml); killed, with its output in the failure, if it ends or times out first."""
    process = subprocess.Popen(
        _sweep_command(cluster, name, "precision=fp32,mixed_bf16"),
        cwd=cluster["driver"],
        env=cluster["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while not list(sweep.glob("*/resolved.yaml")):
        if process.poll() is not None or time.monotonic() >= deadline:
            process.kill()
            raise AssertionError(process.communicate()[0][-5000:])
        time.sleep(0.1)
    return process


def _show(output: str) -> None:
    """The sweep's own lines (which job ran where) into the test log."""
    print("\n".join(line for line in output.splitlines() if line.startswith(("job ", "sweep ", "driver: "))))


def _summary(cluster, sweep: str, output: str) -> list[dict]:
    summary = cluster["driver"] / "outputs" / sweep / "summary.csv"
    assert summary.is_file(), output[-5000:]
    with open(summary) as stream:
        return list(csv.DictReader(stream))


def _node_of(cluster, row: dict) -> str:
    """Which node's working dir holds the job's folder (the record says where it is)."""
    folder = Path(row["folder"])
    for name in ("head", "worker"):
        if folder.is_relative_to(cluster[name].workdir):
            return name
    raise AssertionError(f"job {row['job']}'s folder {folder} is on neither node")


@pytest.mark.slow
def test_a_2x2_sweep_runs_on_both_nodes_and_its_records_come_back(cluster):
    start = time.monotonic()
    result, rows = _sweep(cluster, "grid", "precision=fp32,mixed_bf16", "mask=reimpl,original")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    print(f"2x2 sweep: {time.monotonic() - start:.0f} s")
    _show(output)
    assert sorted(int(row["job"]) for row in rows) == [0, 1, 2, 3]
    assert [row["status"] for row in rows] == ["passed"] * 4, [(row["job"], row["reason"]) for row in rows]
    assert len({row["overrides"] for row in rows}) == 4
    nodes = {row["job"]: _node_of(cluster, row) for row in rows}
    assert set(nodes.values()) == {"head", "worker"}, nodes
    for node in ("head", "worker"):  # one Ray node id per node, and each job's folder only on its node
        assert len({row["ray_node"] for row in rows if nodes[row["job"]] == node}) == 1
    assert len({row["ray_node"] for row in rows}) == 2
    for row in rows:
        assert (Path(row["folder"]) / "report.json").is_file()
        assert not (cluster["driver"] / "outputs" / "grid" / row["job"]).exists()  # the driver never had it
    finished = [line for line in result.stdout.splitlines() if line.startswith("job ") and " on " in line]
    assert len(finished) == 4 and all("passed on" in line and "ray node" in line for line in finished), output[-3000:]
    assert (cluster["worker"].cache / TINY).is_dir()  # the worker exported the preset into its own cache
    summary_md = (cluster["driver"] / "outputs" / "grid" / "summary.md").read_text()
    assert "Jobs ran on 2 nodes" in summary_md


@pytest.mark.slow
def test_a_node_whose_input_differs_fails_its_job_with_the_reason(cluster):
    entry = cluster["worker"].cache / TINY
    assert entry.is_dir(), "the 2x2 sweep runs first and fills the worker's cache"
    index = entry / "variables" / "variables.index"
    index.write_bytes(index.read_bytes() + b"stale")  # the worker's copy no longer matches the driver's
    try:
        result, rows = _sweep(cluster, "stale", "precision=fp32,mixed_bf16")
    finally:
        shutil.rmtree(entry)
    _show(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    by_node = {_node_of(cluster, row): row for row in rows}
    assert set(by_node) == {"head", "worker"}, rows
    assert by_node["head"]["status"] == "passed"
    stale = by_node["worker"]
    assert stale["status"] == "failed" and "input:" in stale["reason"], stale
    assert "different file" in stale["reason"] and "was not compiled" in stale["reason"], stale
    assert not (Path(stale["folder"]) / "model").exists()


@pytest.mark.slow
def test_a_job_whose_node_dies_is_a_row_and_the_sweep_finishes(cluster):
    worker = cluster["worker"]
    sweep = worker.workdir / "outputs" / "dies"
    process = _sweep_begun(cluster, "dies", sweep)  # the worker's job has begun
    try:
        os.kill(_raylet_pid(worker), signal.SIGKILL)
        output, _ = process.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    _show(output)
    assert process.returncode == 0, output[-5000:]
    rows = _summary(cluster, "dies", output)
    assert len(rows) == 2, rows
    lost = [row for row in rows if row["status"] == "failed"]
    assert len(lost) == 1 and "lost on the cluster" in lost[0]["reason"], rows
    assert lost[0]["folder"] == f"outputs/dies/{lost[0]['job']}" and lost[0]["node"] == ""  # the node is gone
    assert lost[0]["ray_node"] and lost[0]["ray_node"] not in {row["ray_node"] for row in rows if row is not lost[0]}
    assert (worker.workdir / lost[0]["folder"]).is_dir()
    survivor = next(row for row in rows if row is not lost[0])
    assert survivor["status"] == "passed" and _node_of(cluster, survivor) == "head"
    assert "failed on a node that died" in output


@pytest.mark.slow
def test_ctrl_c_on_the_driver_stops_the_jobs(cluster):
    """After the worker node died only the head is left (1 CPU): one job runs, the other waits; Ctrl-C ends both."""
    sweep = cluster["head"].workdir / "outputs" / "stopped"
    process = _sweep_begun(cluster, "stopped", sweep)
    try:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    _show(output)
    assert process.returncode == 130, output[-5000:]
    assert "cancelling 2 job(s)" in output, output[-5000:]
    running = [folder for folder in sweep.iterdir() if (folder / "resolved.yaml").is_file()]
    assert len(running) == 1, running  # the waiting job never started
    report = running[0] / "report.json"
    assert report.is_file() and '"status": "interrupted"' in report.read_text(), output[-5000:]
