"""A target=stablehlo artifact under bertc.runtime.stablehlo: its manifest read and rewritten, the serve command run
in-process, and a refusal checked both ways (the Runtime class and `--check`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertc.runtime import serve as run_cli
from bertc.runtime.stablehlo import ServingError


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write_manifest(folder: Path, value) -> None:
    (folder / "manifest.json").write_text(json.dumps(value))


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = run_cli.main([*map(str, args)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def assert_refused(folder: Path, capsys, *words: str) -> None:
    """The runtime refuses the artifact; `python -m bertc.runtime.serve --check` exits 2 with one error paragraph."""
    from bertc.runtime.stablehlo import Runtime

    with pytest.raises(ServingError) as raised:
        Runtime(folder, platform="cpu")
    for word in words:
        assert word in str(raised.value), str(raised.value)
    code, _, err = cli(folder, "--check", capsys=capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    for word in words:
        assert word in err, err
