"""bertc: a declarative compiler for fine-tuned BERT SavedModels; `bertc.compile(...)` runs one from Python.

`compile` lives in bertc/driver/api.py and is imported on first use, so `import bertc` stays cheap (no
TensorFlow, no Hydra).
"""

from __future__ import annotations

__all__ = ["compile"]


def __getattr__(name: str):
    if name == "compile":
        from bertc.driver.api import compile as compile_model

        return compile_model
    raise AttributeError(f"module 'bertc' has no attribute {name!r}")
