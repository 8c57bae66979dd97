"""SIGINT, SIGTERM and crashes during a job -> an honest record: report.json, one line, the exit code.

SIGINT (Ctrl-C) and SIGTERM become `Interrupted` (a KeyboardInterrupt) in the main thread. The
runner records status `interrupted` with the stage it was in, removes its staging folder, writes
the reports and prints one line; the process exits 128 + the signal (130, 143), at once, without the
interpreter's shutdown around TensorFlow's threads (`leave`: that shutdown aborted). A second signal
while that record is being written is ignored, so the record is complete. In a sweep, a job that
crashes is recorded `failed` with its traceback in report.json and the sweep goes on (Hydra would
re-raise after the last job and skip the summary); a Ctrl-C ends the sweep.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # python -m bertc installs the handlers first thing: nothing heavy is imported here
    from rich.console import Console

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_USER_ERROR = 2


class Interrupted(KeyboardInterrupt):
    """The process got SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}" + (" (Ctrl-C)" if signum == signal.SIGINT else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def as_interrupted(error: BaseException) -> Interrupted:
    """A KeyboardInterrupt that did not come through our handler counts as SIGINT."""
    return error if isinstance(error, Interrupted) else Interrupted(signal.SIGINT)


def _raise_interrupted(signum, frame) -> None:
    if _in_swallowing_context(frame):
        # Python prints and drops an exception raised in a gc callback or a __del__ (TensorFlow's XLA
        # registers a gc callback that runs often): the interruption would be lost. Ask again in a moment.
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    for each in SIGNALS:  # the record of this interruption is written undisturbed
        signal.signal(each, signal.SIG_IGN)
    global _received
    _received = Interrupted(signum)
    raise _received


_received: Interrupted | None = None  # the signal that arrived inside the current signals_raise block


def received_interruption() -> Interrupted | None:
    """The interruption raised inside the current `signals_raise` block, if any. An exception raised by the
    handler inside C code can come out as another error: TensorFlow's tracing, interrupted while it iterates
    in C, surfaces `SystemError: ... bad argument to internal function`. Such an error is the interruption."""
    return _received


def _in_swallowing_context(frame) -> bool:
    """Whether the interrupted code is a gc callback or a finalizer, where an exception does not propagate."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


_process_wide = False  # inside python -m bertc's main (exit_on_interrupt): the process is bertc's to end


def install_signal_handlers() -> None:
    """For the whole process (python -m bertc): from here on SIGINT and SIGTERM raise Interrupted."""
    if threading.current_thread() is threading.main_thread():
        for each in SIGNALS:
            signal.signal(each, _raise_interrupted)


def leave(code: int) -> NoReturn:
    """End an interrupted command-line run with `code` (130, 143), its record written and printed.

    The process leaves at once, without the interpreter's shutdown: a signal may land while TensorFlow works in
    threads of its own (an XLA compile, a verify call in bertc.driver.limits.run_with_limit's worker), which cannot be
    stopped or joined, and shutting down around them ends in `terminate called after throwing an instance of
    ''` and SIGABRT (exit -6) instead of 128 + the signal. The run's files are closed by then, the staging
    folder removed, and the run folder's lock goes with the process. A run inside another program (the API,
    tests: not under python -m bertc's main) raises SystemExit instead."""
    if _process_wide:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


@contextlib.contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise Interrupted inside the block (nothing to do outside the main thread); the
    previous handlers come back after it, also when they were bertc's already (an enclosing block, the process):
    an interruption inside sets them to ignore while its record is written, and that must not outlive the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _received
    _received = None
    previous = {each: signal.getsignal(each) for each in SIGNALS}
    for each in SIGNALS:
        signal.signal(each, _raise_interrupted)
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)


def mark_recorded(error: BaseException) -> None:
    """The run's report.json already describes this error: the layers above must not write another."""
    with contextlib.suppress(AttributeError):
        setattr(error, "bertc_recorded", True)  # not one BaseException declares; recorded() reads it


def recorded(error: BaseException) -> bool:
    return bool(getattr(error, "bertc_recorded", False))


def interrupted_line(error: Interrupted, stage: str, run_dir: Path) -> str:
    return (
        f"bertc: {error} during {stage}; recorded as interrupted in {run_dir / 'report.json'}, "
        f"nothing published (exit {error.exit_code})"
    )


@contextlib.contextmanager
def exit_on_interrupt():
    """python -m bertc's outermost block: an interruption no run recorded (Hydra starting, TensorFlow being
    imported) ends with one line and 128 + the signal, not a traceback."""
    global _process_wide
    _process_wide = True  # an interrupted run leaves at once (`leave`); importing this module does not do it
    try:
        yield
    except KeyboardInterrupt as error:
        interrupted = as_interrupted(error)
        if not recorded(error):
            print(f"bertc: {interrupted} before the run started; no report written", file=sys.stderr)
        leave(interrupted.exit_code)


def guarded_job(
    run_dir: Path, model_path, overwrite: bool, console: Console, multirun: bool, job: Callable[[], int]
) -> int:
    """run_job's frame: the run folder claimed (bertc/run/rundir.py), signals recorded, a sweep job's crash
    recorded."""
    from rich.markup import escape

    from bertc.run.report import write_reports
    from bertc.run.rundir import RunFolderError, claim_run_folder

    try:
        claim = claim_run_folder(run_dir, model_path, overwrite)
    except RunFolderError as error:  # the folder is someone else's: nothing is written into it
        console.print(f"[bold red]error:[/] {escape(str(error))}")
        if not multirun:
            raise SystemExit(EXIT_USER_ERROR) from None
        return EXIT_USER_ERROR
    with claim, signals_raise():
        try:
            return job()
        except KeyboardInterrupt as error:
            interrupted = as_interrupted(error)
            if not recorded(error):  # before compile_run began: while the plan was being built
                write_reports(
                    run_dir,
                    {"status": "interrupted", "failed_step": "plan", "error": str(interrupted), "steps": []},
                )
                console.print(escape(interrupted_line(interrupted, "plan", run_dir)))
            leave(interrupted.exit_code)
        except Exception as error:
            if not multirun:
                raise
            if not recorded(error):
                write_reports(
                    run_dir,
                    {
                        "status": "failed",
                        "failed_step": "plan",
                        "error": str(error) or type(error).__name__,
                        "traceback": traceback.format_exc(),
                        "steps": [],
                    },
                )
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            console.print(
                f"[bold red]error[/]: this job crashed ({escape(first)}); the traceback is in "
                f"{escape(str(run_dir / 'report.json'))}; the sweep goes on"
            )
            return 1
