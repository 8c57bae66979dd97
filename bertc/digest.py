"""Digests of files and folders (sha256): the input model's, a preset's cache entry's, an artifact's."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """sha256 over each file's name (relative to root) and bytes, in the given order: "sha256:<hex>"."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        hash_file(digest, file)
    return "sha256:" + digest.hexdigest()


def hash_file(digest, file: Path):
    """`digest` updated with the file's bytes, read a MiB at a time."""
    with open(file, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest
