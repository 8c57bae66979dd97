"""The command line before Hydra sees it: bertc's own --help and --version, and unknown keys or options
refused with the nearest valid names. Reads conf/ and the schemas only: no TensorFlow, answers in a blink."""

from __future__ import annotations

import dataclasses
import difflib
from importlib import metadata
from pathlib import Path

from bertc.driver.config import TOP_LEVEL

GROUP_HELP = {
    "model": "the input: model.path=DIR (a SavedModel, checkpoint or Hugging Face folder) or a preset",
    "target": "how the rewritten graph is compiled and where it runs",
    "verify": "compiled vs original on the same inputs, gated per precision",
    "bench": "original vs compiled in one process, interleaved",
    "shape": "shape.batch_size (the compiled warm-up batch), shape.seq_len (must equal the model's)",
    "security": "security.allow_ops extends the op allowlist; security.guard_inputs rejects out-of-range ids",
}
EXAMPLES = (
    ("bertc", "compile the built-in demo model"),
    ("bertc model.path=/models/mrpc precision=mixed partition=cpu_embed", "your model, the seed's recipe"),
    ("bertc precision=fp32 mask.fold_scale=true length=trim", "fp32, each batch only as long as its real tokens"),
    ("bertc -m precision=fp32,mixed,mixed_bf16 partition=none,cpu_embed", "a sweep: one job per combination"),
    ("bertc dry_run=true precision=mixed", "print the plan and its fingerprint only"),
)


def version() -> str:
    try:
        return metadata.version("bertc")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def options(conf_dir: Path, group: str) -> list[str]:
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def group_help() -> dict[str, str]:
    from bertc.passes import passes

    return {**{spec.group: spec.help for spec in passes()}, **GROUP_HELP}


def help_text(conf_dir: Path, width: int | None = None) -> str:
    """bertc's help, wrapped to `width` columns (the terminal's; 80 when there is none)."""
    import shutil
    import textwrap

    from bertc.passes import passes

    width = max(60, width or shutil.get_terminal_size((80, 24)).columns)

    def item(label: str, text: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=f"  {label:<10} ", subsequent_indent=" " * 13)

    lines = [
        *textwrap.wrap(
            f"bertc {version()}: compile a fine-tuned BERT SavedModel into a faster one, verify it "
            "against the original, benchmark both, and leave the model and a report in a run folder.",
            width,
        ),
        "",
        "usage: bertc [-m] [group=option ...] [group.key=value ...]",
        "       (python -m bertc works the same)",
        "",
        "groups (group=option; the first option listed is the default):",
    ]
    defaults = _defaults(conf_dir)
    ordered = ["model", *(spec.group for spec in passes()), "target", "verify", "bench"]
    descriptions = group_help()
    for group in ordered:
        names = options(conf_dir, group)
        default = defaults.get(group)
        shown = [default] + [name for name in names if name != default] if default in names else names
        lines += item(group, descriptions[group]) + item("", f"options: {', '.join(shown)}")
    lines += [
        "",
        *textwrap.wrap(
            "values: any key of a group, e.g. mask.fold_scale=true, verify.dataset=dev.tsv, shape.batch_size=4, "
            f"{', '.join(key.name + '=true' for key in TOP_LEVEL)}; the run folder: hydra.run.dir=DIR",
            width,
            subsequent_indent="        ",
        ),
        "",
        "examples:",
    ]
    for command, what in EXAMPLES:
        lines += textwrap.wrap(command, width, initial_indent="  ", subsequent_indent="      ")
        lines += textwrap.wrap(what, width, initial_indent="      # ", subsequent_indent="      # ")
    lines += [
        "",
        *textwrap.wrap(
            "exit codes: 0 passed; 1 rejected by verify, or a bug in bertc; 2 the input or the config "
            "is at fault; 130/143 interrupted.",
            width,
            subsequent_indent="            ",
        ),
        "more: bertc --version, bertc --hydra-help (Hydra's own flags), README.md",
    ]
    return "\n".join(lines)


def _defaults(conf_dir: Path) -> dict[str, str]:
    """group -> default option, from config.yaml's defaults list (`  - group: option`)."""
    result = {}
    for line in (conf_dir / "config.yaml").read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry.startswith("- ") and ":" in entry and not entry.startswith("- override"):
            group, _, option = entry[2:].partition(":")
            result[group.strip()] = option.strip()
    return result


def check_overrides(arguments: list[str], conf_dir: Path) -> str | None:
    """The first override naming a key or option that does not exist, as a message with the nearest names."""
    from bertc.driver.config import root_schema

    schema = root_schema()
    for argument in arguments:
        if argument.startswith(("-", "+", "~", "hydra.", "hydra/")) or "=" not in argument:
            continue
        key, _, value = argument.partition("=")
        problem = _check_key(schema, key.split("."), conf_dir, value)
        if problem:
            return f"{argument}: {problem}"
        problem = _check_value(schema, key.split("."), conf_dir, value)
        if problem:
            return problem
    return None


def _check_key(schema: type, path: list[str], conf_dir: Path, value: str) -> str | None:
    fields = {field.name: field for field in dataclasses.fields(schema)}
    head = path[0]
    if head not in fields:
        return _unknown(f"key {head!r}", head, list(fields))
    if len(path) == 1:
        if (conf_dir / head).is_dir() and "," not in value:
            names = options(conf_dir, head)
            if value not in names:
                return _unknown(f"{head} option {value!r}", value, names)
        return None
    inner = fields[head].type
    if not dataclasses.is_dataclass(inner):
        return None  # a list or a scalar: Hydra checks the value
    known = [field.name for field in dataclasses.fields(inner)]
    if path[1] not in known:
        return _unknown(f"key {head + '.' + path[1]!r}", path[1], known, prefix=f"{head}.")
    return None


def _check_value(schema: type, path: list[str], conf_dir: Path, value: str) -> str | None:
    """A known key's value: its type and declared range (bertc/schema.py), in one line naming both."""
    from bertc.schema import check_override

    fields = {field.name: field for field in dataclasses.fields(schema)}
    field = fields[path[0]]
    if len(path) == 2 and dataclasses.is_dataclass(field.type):
        field = {inner.name: inner for inner in dataclasses.fields(field.type)}[path[1]]
    elif len(path) != 1 or (conf_dir / path[0]).is_dir():
        return None
    return check_override(field, field.type, ".".join(path), value)


def _unknown(what: str, name: str, choices: list[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(prefix + choice for choice in near)}? " if near else ""
    return f"unknown {what}. {hint}Valid: {', '.join(prefix + choice for choice in sorted(choices))}."
