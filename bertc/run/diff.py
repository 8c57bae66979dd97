"""Two run folders -> how their plans differ: input, versions, then step by step and parameter by parameter.

    python -m bertc.run.diff RUN_A RUN_B

Reads each folder's plan.json (and report.json, for the artifact digest) and prints one line per
difference, marking those the fingerprint does not cover (verify, bench, the input's path).
Prints "identical plans" when nothing differs. Exit 0: identical plans; 1: they differ; 2: a
folder is not a bertc run folder. Reads JSON only: no TensorFlow import, so it answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from bertc.errors import UserError
from bertc.jsonfile import read_json_object
from bertc.run.schema import Report, read_report

EXIT_DIFFERENT, EXIT_BAD_FOLDER = 1, 2
# plan.json sections outside the fingerprint: they change how a run is checked, not the artifact.
UNFINGERPRINTED = ("model", "verify", "bench", "security")


class BadRunFolder(UserError):
    """A folder without a readable plan.json."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    path: Path
    plan: dict  # plan.json: fingerprint, input {path, digest}, versions, plan
    report: Report | None  # report.json, None when there is none

    @property
    def status(self) -> str | None:
        return self.report.status if self.report is not None else None

    @property
    def artifact_digest(self) -> str | None:
        artifact = self.report.artifact if self.report is not None else None
        return artifact.digest if artifact is not None else None


@dataclasses.dataclass(frozen=True)
class Difference:
    where: str  # "input", "versions", "step <name>", "target", "verify", ...
    what: str  # "fold_scale: false -> true"
    in_fingerprint: bool


def read_run(path: str | Path) -> RunRecord:
    path = Path(path)
    if not path.is_dir():
        raise BadRunFolder(f"{path} is not a folder; give a bertc run folder (it holds plan.json).")
    plan_file = path / "plan.json"
    if not plan_file.is_file():
        raise BadRunFolder(
            f"{path} has no plan.json, so it is not a bertc run folder, or its run failed before the plan was "
            "made (see its report.json)."
        )
    plan = _read_json(plan_file)
    if not {"fingerprint", "input", "versions", "plan"} <= set(plan):
        raise BadRunFolder(f"{plan_file} lacks fingerprint, input, versions or plan: it was not written by bertc.")
    _check_plan(plan, plan_file)
    report_file = path / "report.json"
    report = read_report(report_file, BadRunFolder) if report_file.exists() else None
    return RunRecord(path, plan, report)


def _check_plan(plan: dict, file: Path) -> None:
    """The types compare() and reproduce rely on: a damaged or foreign plan.json is refused here, not
    met later as a KeyError."""
    problems = []
    if not isinstance(plan["fingerprint"], str):
        problems.append("fingerprint is not a string")
    for key in ("input", "versions", "plan"):
        if not isinstance(plan[key], dict):
            problems.append(f"{key} is not an object")
    body = plan["plan"] if isinstance(plan["plan"], dict) else {}
    steps = body.get("steps", [])
    if not isinstance(steps, list) or not all(
        isinstance(step, dict) and isinstance(step.get("name"), str) and isinstance(step.get("params") or {}, dict)
        for step in steps
    ):
        problems.append("plan.steps is not a list of {name, params}")
    problems += [
        f"plan.{key} is not an object"
        for key in ("target", *UNFINGERPRINTED)
        if not isinstance(body.get(key, {}), dict)
    ]
    if problems:
        raise BadRunFolder(f"{file} is not a plan bertc wrote: {'; '.join(problems)}.")


def _read_json(file: Path) -> dict:
    return read_json_object(file, BadRunFolder)


def show(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts, by index) -> {"rules[0].scope": ...}; lists of plain values stay whole."""
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return items if items else {prefix: value}
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        items = {}
        for index, item in enumerate(value):
            items.update(flatten(item, f"{prefix}[{index}]"))
        return items
    return {prefix: value}


def parameter_changes(before: Any, after: Any) -> list[str]:
    """'key: before -> after' for each parameter that differs; a key on one side only shows as (absent)."""
    left, right = flatten(before), flatten(after)
    lines = []
    for key in list(left) + [key for key in right if key not in left]:
        if left.get(key, ...) != right.get(key, ...):
            old = show(left[key]) if key in left else "(absent)"
            new = show(right[key]) if key in right else "(absent)"
            lines.append(f"{key or 'value'}: {old} -> {new}")
    return lines


def _merged_order(first: list[str], second: list[str]) -> list[str]:
    """Both runs list steps in bertc's canonical order; merge them, keeping it."""
    order = list(first)
    for index, name in enumerate(second):
        if name not in order:
            previous = next((order.index(earlier) for earlier in reversed(second[:index]) if earlier in order), -1)
            order.insert(previous + 1, name)
    return order


def step_differences(steps_a: list[dict], steps_b: list[dict]) -> list[Difference]:
    params_a = {step["name"]: step["params"] for step in steps_a}
    params_b = {step["name"]: step["params"] for step in steps_b}
    differences = []
    for name in _merged_order(list(params_a), list(params_b)):
        where = f"step {name}"
        if name not in params_a or name not in params_b:
            side, params = ("a", params_a[name]) if name in params_a else ("b", params_b[name])
            differences.append(Difference(where, f"only in {side}", True))
            differences += [Difference(where, f"  {line}", True) for line in _param_lines(params)]
        else:
            differences += [Difference(where, line, True) for line in parameter_changes(params_a[name], params_b[name])]
    return differences


def _param_lines(params: Any) -> list[str]:
    """A step's parameters, one line each; a list of rules one line per rule."""
    lines = []
    for key, value in (params or {}).items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            lines += [f"{key}[{index}]: {show(item)}" for index, item in enumerate(value)]
        else:
            lines.append(f"{key}: {show(value)}")
    return lines


def compare(a: RunRecord, b: RunRecord) -> list[Difference]:
    """Every difference between two runs' plan.json, in the order a person reads a plan."""
    plan_a, plan_b = a.plan["plan"], b.plan["plan"]
    input_a, input_b = a.plan["input"], b.plan["input"]
    differences = []
    if input_a.get("digest") != input_b.get("digest"):
        differences.append(Difference("input", f"digest: {input_a.get('digest')} -> {input_b.get('digest')}", True))
    if input_a.get("path") != input_b.get("path"):
        differences.append(Difference("input", f"path: {input_a.get('path')} -> {input_b.get('path')}", False))
    versions = parameter_changes(a.plan["versions"], b.plan["versions"])
    differences += [Difference("versions", line, True) for line in versions]
    differences += step_differences(plan_a.get("steps", []), plan_b.get("steps", []))
    target = parameter_changes(plan_a.get("target", {}), plan_b.get("target", {}))
    differences += [Difference("target", line, True) for line in target]
    for section in UNFINGERPRINTED:
        changes = parameter_changes(plan_a.get(section, {}), plan_b.get(section, {}))
        differences += [Difference(section, line, False) for line in changes]
    return differences


def render(a: RunRecord, b: RunRecord, differences: list[Difference]) -> list[str]:
    lines = [f"a  {a.path}  fingerprint {a.plan['fingerprint']}", f"b  {b.path}  fingerprint {b.plan['fingerprint']}"]
    same_fingerprint = a.plan["fingerprint"] == b.plan["fingerprint"]
    if not differences:
        lines.append("identical plans")
    else:
        width = max(len(difference.where) for difference in differences)
        previous = None
        for difference in differences:
            label = difference.where if difference.where != previous else ""
            note = "" if difference.in_fingerprint else "   (not in the fingerprint)"
            lines.append(f"{label:<{width}}  {difference.what}{note}")
            previous = difference.where
        if same_fingerprint:
            lines.append("plans differ only in settings that cannot change the artifact: same fingerprint")
        else:
            lines.append("plans differ: different fingerprints")
    if a.artifact_digest and b.artifact_digest:
        lines.append(
            "artifacts: same digest"
            if a.artifact_digest == b.artifact_digest
            else f"artifacts differ: {a.artifact_digest} -> {b.artifact_digest}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertc.run.diff", description="How two bertc runs' plans differ.")
    parser.add_argument("run_a", help="a run folder (holds plan.json)")
    parser.add_argument("run_b", help="another run folder")
    arguments = parser.parse_args(argv)
    try:
        a, b = read_run(arguments.run_a), read_run(arguments.run_b)
    except BadRunFolder as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_FOLDER
    differences = compare(a, b)
    print("\n".join(render(a, b, differences)))
    return EXIT_DIFFERENT if differences else 0


if __name__ == "__main__":
    sys.exit(main())
