"""A plan's ModelInput -> the folder of a serving SavedModel to compile (exported into the cache if needed).

A SavedModel path is used as it is (read-only). Presets, the packaged MiniLM, google-research
checkpoint folders and Hugging Face folders are exported once by `bertc.model.export` into the cache
(`$BERTC_CACHE`, else `$XDG_CACHE_HOME/bertc`, else `~/.cache/bertc`) and reused; the cache key
holds everything the export depends on, so a stale entry cannot be picked up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bertc.digest import files_digest
from bertc.driver.config import ModelInput
from bertc.errors import ModelError

EXPORT_FORMAT = "3"  # bump when bertc.model's export changes (2: presets get a vocab.txt; 3: HF gelu is erf)


def cache_dir() -> Path:
    if os.environ.get("BERTC_CACHE"):
        return Path(os.environ["BERTC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bertc"


def detect_kind(path: Path) -> str:
    if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file() or (path / "variables").is_dir():
        return "saved_model"
    if (path / "bert_config.json").is_file():
        return "checkpoint"
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return "hf"
    return "saved_model"  # the loader says precisely what is missing


def _folder_digest(path: Path) -> str:
    return files_digest(path, sorted(file for file in path.rglob("*") if file.is_file())).removeprefix("sha256:")[:16]


def materialize(source: ModelInput, log: Callable[[str], None] = lambda message: None) -> Path:
    """The SavedModel folder for `source`, exporting it into the cache first when it is not one."""
    from bertc.frontends.security import refuse_outside_links
    from bertc.model.export import export_model

    if source.kind == "path":
        assert source.path is not None  # kind "path": a path is set
        path = Path(source.path).expanduser()
        if not path.exists() and not path.is_symlink():
            raise ModelError(f"model path {path} does not exist; give model.path=<a SavedModel folder>.")
        kind = detect_kind(path)
        # NOTE: before the digest reads the folder: links out (a loop, a dangling link) are refused by name
        refuse_outside_links(path, hard_links=kind != "saved_model")
        if kind == "saved_model":
            return path
        key = f"{kind}-{_folder_digest(path)}-t{source.seq_len}-l{source.num_labels}-s{source.seed}-f{EXPORT_FORMAT}"
        export_args: tuple[str, str | None] = (kind, str(path))
        labels = None  # a fine-tuned classifier brings its own label count
    elif source.kind == "packaged":
        if source.packaged != "minilm":
            raise ModelError(f"model.packaged={source.packaged!r} is unknown; the packaged model is 'minilm'.")
        key = f"minilm-t{source.seq_len}-l{source.num_labels}-s{source.seed}-f{EXPORT_FORMAT}"
        export_args = ("minilm", None)
        labels = source.num_labels
    else:
        key = f"{source.size}-t{source.seq_len}-l{source.num_labels}-s{source.seed}-f{EXPORT_FORMAT}"
        export_args = ("size", source.size)
        labels = source.num_labels
    target = cache_dir() / "models" / key
    if target.is_dir():
        return target
    log(f"exporting {source.name} into the cache: {target}")
    try:
        export_model(*export_args, target, seq_len=source.seq_len, num_labels=labels, seed=source.seed, log=log)
    except (FileExistsError, OSError):
        if not target.is_dir():  # another job may have finished the same export first
            raise
    except ValueError as error:
        raise ModelError(str(error)) from None
    return target
