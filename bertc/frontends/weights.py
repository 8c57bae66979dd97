"""A weight value read from a user's checkpoint -> refused, by name, when its dtype or numbers are wrong.

Every reader of a user's weights asks this (the SavedModel frontends, and bertc.model.sources for checkpoint and
Hugging Face folders), so that a bad weight is named before any work instead of serving NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bertc.errors import ModelError


def weight_problem(name: str, value: np.ndarray, dtype: np.dtype | None = None) -> str | None:
    """What makes a weight wrong in any model, as a phrase naming it: a dtype other than the declared one
    (`dtype`; None: any floating type), or a NaN or Inf value. None when the weight is fine."""
    value = np.asarray(value)
    if dtype is not None and value.dtype != np.dtype(dtype):
        return f"{name} is {value.dtype} in the checkpoint but declared {np.dtype(dtype)} by the model"
    floating = value.dtype.kind in "fc" or value.dtype.name.startswith(("bfloat16", "float8"))
    if dtype is None and not floating:
        return f"{name} is {value.dtype}, not a floating-point weight"
    if floating:
        bad = ~np.isfinite(value.astype(np.complex64 if value.dtype.kind == "c" else np.float32))
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            return (
                f"{name} holds {int(bad.sum())} NaN or Inf value(s) (the first at index {list(first)}: "
                f"{value[first]}); a model with them serves NaN"
            )
    return None


def refuse_bad_weight(path: Path, name: str, value: np.ndarray, dtype=None) -> None:
    """A weight of another dtype than the model declares, or with a NaN or Inf, named before any work."""
    problem = weight_problem(name, value, dtype)
    if problem:
        raise ModelError(
            f"{path}/variables: variable {problem}. Fix the training run or the checkpoint, then export again."
        )
