"""A JSON file that must hold an object -> the dict, or the caller's error type naming what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(file: Path, error: type[Exception], advice: str = ".") -> dict:
    """`advice` ends each message: "." or "; <what to do>"."""
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as problem:
        raise error(f"{file} cannot be read as JSON ({problem}){advice}") from None
    if not isinstance(value, dict):
        raise error(f"{file} holds no JSON object{advice}")
    return value
