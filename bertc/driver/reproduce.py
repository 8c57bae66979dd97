"""A run folder -> its plan rebuilt in a fresh folder, and whether the result is identical; if not, what differs.

    python -m bertc.driver.reproduce RUN [--out DIR] [--keep]

The rebuild composes the run's `resolved.yaml` (values, not interpolations) over bertc's schema
and runs `python -m bertc` on it in a fresh process, from the directory the run was started in
(recorded by Hydra), so a relative `model.path` names the same folder. The benchmark is switched
off: it cannot change the artifact. The rebuild goes to a new temporary folder, removed when the
result is identical and kept (its path printed) when not; `--out DIR` puts it in DIR and keeps it.

Identical means the same fingerprint and the same artifact digest (bertc/run/artifact.py). Otherwise
each cause is named: the input model changed since (its digest), library versions differ, the
plan differs (step or target parameters), or, with all of those equal, the artifact only.
Exit 0: identical; 1: not identical (or the rebuild failed); 2: RUN is not a usable run folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bertc.driver.config import root_schema
from bertc.run.diff import BadRunFolder, Difference, RunRecord, compare, read_run
from bertc.run.schema import BadReport, Report, read_report

EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_BAD_FOLDER = 0, 1, 2
COMPLETED = ("passed", "rejected", "planned")  # a run that got as far as its artifact (or a dry run's plan)
REBUILD_CONFIG = "reproduce"
REBUILD_HEADER = """\
# Written by python -m bertc.driver.reproduce: {run}/resolved.yaml over bertc's schema, bench off.
defaults:
  - bertc_schema
  - override hydra/job_logging: disabled
  - override hydra/hydra_logging: disabled
  - _self_
"""


def check_run_folder(run: Path) -> RunRecord:
    """The run's record, or BadRunFolder saying why the folder cannot be rebuilt."""
    record = read_run(run)
    if not (run / "resolved.yaml").is_file():
        raise BadRunFolder(f"{run} has no resolved.yaml: the run's configuration is missing; it cannot be rebuilt.")
    read_resolved(run / "resolved.yaml")
    status = record.status
    if status not in COMPLETED:
        where = ""
        if record.report is not None and status == "failed":
            where = f" at {record.report.failed_step}: {record.report.error}"
        raise BadRunFolder(
            f"{run} holds a run with status {status or 'unknown'}{where}; there is no model to compare a rebuild with. "
            "Reproduce a run that passed or was rejected by verify (or a dry run)."
        )
    if status != "planned" and not record.artifact_digest:
        raise BadRunFolder(f"{run}/report.json has status {status} but no artifact digest.")
    return record


def read_resolved(file: Path) -> DictConfig:
    """resolved.yaml, checked against bertc's schema: a damaged or foreign file is refused, not rebuilt."""
    try:
        loaded = OmegaConf.load(file)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadRunFolder(f"{file} cannot be read as YAML ({reason}); it cannot be rebuilt.") from None
    if not isinstance(loaded, DictConfig):
        raise BadRunFolder(f"{file} holds no mapping of config groups; it cannot be rebuilt.")
    try:
        OmegaConf.merge(OmegaConf.structured(root_schema()), loaded)
    except OmegaConfBaseException as error:
        reason = " ".join(str(error).split())[:300]
        message = f"{file} does not fit bertc's config schema ({reason}); it cannot be rebuilt."
        raise BadRunFolder(message) from None
    return loaded


def original_cwd(run: Path) -> Path | None:
    """The directory the run was started in, as Hydra recorded it."""
    try:
        hydra = OmegaConf.load(run / ".hydra" / "hydra.yaml")
        cwd = OmegaConf.select(hydra, "hydra.runtime.cwd", default=None)
    except (OSError, OmegaConfBaseException):
        return None
    return Path(cwd) if cwd and Path(cwd).is_dir() else None


def write_rebuild_config(run: Path, out: Path) -> None:
    cfg = read_resolved(run / "resolved.yaml")
    OmegaConf.update(cfg, "bench.enabled", False, merge=True)
    cfg.hydra = {"run": {"dir": str(out)}}
    (out / f"{REBUILD_CONFIG}.yaml").write_text(REBUILD_HEADER.format(run=run) + OmegaConf.to_yaml(cfg))


def rebuild(run: Path, out: Path) -> subprocess.CompletedProcess:
    write_rebuild_config(run, out)
    command = [sys.executable, "-m", "bertc", "--config-path", str(out), "--config-name", REBUILD_CONFIG]
    return subprocess.run(command, cwd=original_cwd(run) or Path.cwd(), capture_output=True, text=True)


def artifact_folder(run: Path, record: RunRecord) -> Path | None:
    """Where the run's model is now: model/ or rejected/ inside the folder (the folder may have moved)."""
    recorded = record.report.artifact.path if record.report is not None and record.report.artifact else None
    for name in ([Path(recorded).name] if recorded else []) + ["model", "rejected"]:
        if (run / name / "saved_model.pb").is_file():
            return run / name
    return None


def _digest_now(folder: Path | None, recorded: str | None) -> tuple[str | None, str | None]:
    """(the run's artifact digest by this bertc's definition, a note when it disagrees with the recorded one)."""
    if folder is None:
        return recorded, "the run's model folder is gone; compared with the digest recorded in report.json"
    from bertc.ir.lazy import import_tensorflow
    from bertc.run.artifact import artifact_digest

    import_tensorflow()  # the digest parses saved_model.pb with TensorFlow's protobufs
    from google.protobuf.message import DecodeError

    try:
        digest = artifact_digest(folder)
    except (DecodeError, OSError) as error:  # a model folder damaged since the run
        return recorded, (
            f"{folder} cannot be read any more ({type(error).__name__}: {error}); compared "
            "with the digest recorded in report.json"
        )
    if recorded and digest != recorded:
        return digest, (
            f"{folder} no longer matches the digest in report.json ({recorded}): it was modified after "
            "the run, or an older bertc defined the digest otherwise; compared with the model as it is now"
        )
    return digest, None


def compare_artifacts(run: Path, original: RunRecord, out: Path, rebuilt: RunRecord, same_fingerprint: bool):
    """(run's digest, rebuild's digest, note, files whose bytes differ). TensorFlow is imported (seconds) only
    to recompute the run's digest where the bytes differ and the plans agree, the one case that needs it."""
    before_folder, after_folder = artifact_folder(run, original), artifact_folder(out, rebuilt)
    after = rebuilt.artifact_digest
    changed = _changed_files(before_folder, after_folder)
    if before_folder is not None and after_folder is not None and not changed:
        note = (
            None
            if original.artifact_digest == after
            else (f"report.json recorded {original.artifact_digest}: an older bertc defined the digest otherwise")
        )
        return after, after, note, changed
    if not same_fingerprint:
        return original.artifact_digest, after, None, changed
    before, note = _digest_now(before_folder, original.artifact_digest)
    return before, after, note, changed


def explain(run: Path, original: RunRecord, out: Path) -> tuple[bool, list[str]]:
    """(identical?, the lines that say so or say what differs)."""
    if not (out / "plan.json").is_file():
        report = _read_report(out / "report.json")
        if report.failed_step == "input":
            cause = f"input changed: the input model cannot be read any more: {report.error}"
        else:
            cause = f"the rebuild failed at {report.failed_step or 'start'}: {report.error or 'see its output'}"
        return False, ["NOT identical:", f"  - {cause}"]
    rebuilt = read_run(out)
    differences = compare(original, rebuilt)
    causes = _causes(original, rebuilt, differences)
    same_fingerprint = original.plan["fingerprint"] == rebuilt.plan["fingerprint"]
    lines = [f"fingerprint  run {original.plan['fingerprint']}", f"             now {rebuilt.plan['fingerprint']}"]
    identical = same_fingerprint
    if original.status != "planned":
        if rebuilt.report is not None and rebuilt.report.status == "failed":
            causes.append(f"the rebuild failed at {rebuilt.report.failed_step}: {rebuilt.report.error}")
            identical = False
        else:
            before, after, note, changed = compare_artifacts(run, original, out, rebuilt, same_fingerprint)
            lines += [f"artifact     run {before}", f"             now {after}"] + ([f"note: {note}"] if note else [])
            if before != after:
                identical = False
                if same_fingerprint:
                    causes.append(
                        "artifact only: same plan, input and versions, yet the model differs"
                        + (f" (in {', '.join(changed)})" if changed else "")
                        + ". bertc's own code may have changed without a new version number (an editable install), "
                        "or a compile step is not deterministic"
                    )
                else:
                    lines.append("the artifact differs too, as expected from the causes below")
            else:
                lines.append(_byte_level(changed))
                if not same_fingerprint:
                    lines.append("the artifact is the same nonetheless, but the plan that made it is not")
    others = [f"{d.where} {d.what}" for d in differences if not d.in_fingerprint and d.where != "bench"]
    if others:
        lines.append("also differs, outside the fingerprint: " + "; ".join(others))
    if identical and original.status == "planned":
        return True, lines + ["identical: the rebuild has the same fingerprint (a dry run: no artifact to compare)"]
    if identical:
        return True, lines + ["identical: the rebuild has the same fingerprint and the same artifact digest"]
    return False, lines + ["NOT identical:"] + [f"  - {cause}" for cause in causes]


def _causes(original: RunRecord, rebuilt: RunRecord, differences: list[Difference]) -> list[str]:
    """Why the fingerprints differ, in plain words: input, versions, plan."""
    causes = []
    if any(d.where == "input" and d.in_fingerprint for d in differences):
        causes.append(
            f"input changed: the model at {rebuilt.plan['input']['path']} has digest {rebuilt.plan['input']['digest']} "
            f"now; the run read {original.plan['input']['digest']} (the input model changed since the run)"
        )
    version_changes = [d.what for d in differences if d.where == "versions"]
    if version_changes:
        causes.append("versions differ (run -> now): " + "; ".join(version_changes))
    plan_changes = [
        f"{d.where}: {d.what.strip()}" for d in differences if d.where.startswith("step") or d.where == "target"
    ]
    if plan_changes:
        causes.append("plan differs (run -> now): " + "; ".join(plan_changes))
    if original.plan["fingerprint"] != rebuilt.plan["fingerprint"] and not causes:
        causes.append(
            "fingerprint differs although input, versions and plan agree: this bertc defines the "
            "fingerprint otherwise than the one that made the run"
        )
    return causes


def _read_report(report_file: Path) -> Report:
    """The rebuild's report; an empty failed one when it left none bertc can read (its output says why)."""
    try:
        return read_report(report_file)
    except BadReport:
        return Report(status="failed")


def _changed_files(before: Path | None, after: Path | None) -> list[str] | None:
    """The files whose bytes differ (fingerprint.pb aside), or None when a folder is missing."""
    from bertc.run.artifact import NONDETERMINISTIC_FILES, file_digests

    if before is None or after is None:
        return None
    old, new = file_digests(before), file_digests(after)
    names = sorted(set(old) | set(new))
    return [name for name in names if old.get(name) != new.get(name) and name not in NONDETERMINISTIC_FILES]


def _byte_level(changed: list[str] | None) -> str:
    if changed is None:
        return "artifact digests agree (a model folder is missing: no byte comparison)"
    if not changed:
        return (
            "saved_model.pb and variables/ are byte-identical (fingerprint.pb differs by TensorFlow's random UUID only)"
        )
    return (
        f"{', '.join(changed)} {'differs' if len(changed) == 1 else 'differ'} in bytes only by TensorFlow's "
        "per-process numbering of functions and captures (the canonical digests agree)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bertc.driver.reproduce", description="Rebuild a bertc run and compare."
    )
    parser.add_argument("run", help="a run folder (holds plan.json, resolved.yaml, .hydra/)")
    parser.add_argument("--out", help="rebuild into this folder (new or empty) and keep it")
    parser.add_argument("--keep", action="store_true", help="keep the temporary rebuild folder even when identical")
    arguments = parser.parse_args(argv)
    run = Path(arguments.run).resolve()
    try:
        original = check_run_folder(run)
    except BadRunFolder as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_FOLDER
    if arguments.out:
        out = Path(arguments.out).resolve()
        if out.exists() and not out.is_dir():
            print(f"error: --out {out} is a file, not a folder; give a new or empty folder.", file=sys.stderr)
            return EXIT_BAD_FOLDER
        if out.exists() and any(out.iterdir()):
            print(
                f"error: --out {out} is not empty; bertc.driver.reproduce never overwrites a folder.", file=sys.stderr
            )
            return EXIT_BAD_FOLDER
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(tempfile.mkdtemp(prefix="bertc-reproduce-"))
    print(f"rebuilding {run}\n        into {out} (bench off: it cannot change the artifact)", flush=True)
    result = rebuild(run, out)
    identical, lines = explain(run, original, out)
    if result.returncode and _read_report(out / "report.json").failed_step not in ("input", "verify"):
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        lines.append("rebuild output (last lines):\n" + "\n".join(tail))
    print("\n".join(lines))
    if identical and not (arguments.out or arguments.keep):
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"rebuild kept in {out}")
    return EXIT_IDENTICAL if identical else EXIT_DIFFERENT


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
