"""`tensorflow`, imported quietly on first attribute access: `bertc --help`, shell completion and config
errors answer without loading it (importing TensorFlow takes seconds and prints to fd 2)."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Import TensorFlow once, with its C++ start-up lines (CUDA probes, oneDNN notices) kept off the terminal."""
    if "tensorflow" in sys.modules and hasattr(sys.modules["tensorflow"], "__version__"):
        return sys.modules["tensorflow"]
    # NOTE: read by TensorFlow's C++ logging when the library loads: set before the import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _LazyTensorFlow:
    """Stands for the `tensorflow` module; the first attribute read imports it."""

    def __getattr__(self, name: str):
        return getattr(import_tensorflow(), name)


tf = _LazyTensorFlow()
