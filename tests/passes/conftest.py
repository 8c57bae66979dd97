"""The pass tests' shared fixture: the tiny model as the frontend reads it, read once per test module."""

from __future__ import annotations

import pytest

from bertc.frontends.load import load_saved_model


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_saved_model(tiny_model_dir)
