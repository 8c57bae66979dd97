"""The terminal: TensorFlow's start-up and runtime noise kept off it, rich output and progress on it.

TensorFlow and XLA log from C++ straight to file descriptor 2; Python-level settings do not reach
all of it. While bertc runs, fd 2 goes to `tensorflow.log` in the run folder, and bertc writes to
a duplicate of the real terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from rich.console import Console


def silence_tf_loggers() -> None:
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


@contextlib.contextmanager
def native_stderr_to(path: Path | None):
    """Send fd 2 to `path` (or /dev/null) for the duration; yield a Console on the real terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(str(path) if path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    os.dup2(target, 2)
    os.close(target)
    old_stderr = sys.stderr
    sys.stderr = terminal
    try:
        yield Console(file=terminal, highlight=False)
    finally:
        sys.stderr.flush()
        sys.stderr = old_stderr
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
