"""Shared fixtures: models built once per test session, from fixed seeds, instead of committed blobs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before any test module imports TensorFlow
# Models bertc exports for itself (presets, MiniLM) go to a per-session cache, not the user's.
os.environ.setdefault("BERTC_CACHE", tempfile.mkdtemp(prefix="bertc-test-cache-"))

TINY_SEQ_LEN = 128
TINY_SEED = 0


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` preset (2 layers, hidden 32, 4 heads) as run_classifier's serving SavedModel.

    Seed 0, sequence length 128, 2 labels; about a second to build. Treat it as read-only: it is
    shared by every test in the session.
    """
    from bertc.model.export import export_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    export_model("size", "tiny", out, seq_len=TINY_SEQ_LEN, num_labels=2, seed=TINY_SEED)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """The tiny model as the frontend reads it, read once per test module."""
    from bertc.frontends.load import load_saved_model

    return load_saved_model(tiny_model_dir)
