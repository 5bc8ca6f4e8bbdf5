"""Errors a person can read: what the command lines print for bad input (README, "Errors").

Bad input is what a person typed or has on disk: a bad value, a config that does not compose, a missing
dataset or sweep file, a results directory that cannot be written, a SLURM request that the cluster cannot
satisfy. The command lines (`python -m experiments.train`, `python -m experiments.runner.sweep`) print it
as one line, `error: <what, which value, what is allowed>`, and exit with status 2. HYDRA_FULL_ERROR=1
shows the traceback instead. Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    PermissionError,
    HydraException,
    OmegaConfBaseException,
)
INPUT_ERROR_EXIT = 2
DEBUG_VARIABLE = "HYDRA_FULL_ERROR"  # Hydra's own switch for full tracebacks
# The user's choice, read once when the command starts (hydra_reraises sets the variable for Hydra).
SHOW_TRACEBACK = os.environ.get(DEBUG_VARIABLE) == "1"


@contextlib.contextmanager
def input_errors_as_one_line() -> Iterator[None]:
    """Prints an input error escaping the block as one line and exits with status 2."""
    try:
        yield
    except INPUT_ERRORS as error:
        if SHOW_TRACEBACK:
            raise
        print(f"error: {describe(error)}", file=sys.stderr)
        print(f"({DEBUG_VARIABLE}=1 shows the traceback)", file=sys.stderr)
        sys.exit(INPUT_ERROR_EXIT)


def describe(error: BaseException) -> str:
    """The error's message as one line; a config that Hydra cannot find lists the available ones."""
    if isinstance(error, MissingConfigException) and error.options:
        what = str(error).splitlines()[0].split(": ", 1)[-1]  # "In 'train': Could not find ..."
        return f"{what}; available: {', '.join(error.options)}"
    return one_line(str(error))


@contextlib.contextmanager
def hydra_reraises() -> Iterator[None]:
    """Hydra prints (and exits on) every exception of a run unless HYDRA_FULL_ERROR=1; within the block it
    re-raises them instead, so that `input_errors_as_one_line` decides what is printed."""
    before = os.environ.get(DEBUG_VARIABLE)
    os.environ[DEBUG_VARIABLE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DEBUG_VARIABLE, None)
        else:
            os.environ[DEBUG_VARIABLE] = before


def one_line(message: str) -> str:
    """A multi-line error message (Hydra's lists of options, the paths a dataset was looked for at) as
    one line: indented lines are list items, joined by commas after the line that introduces them."""
    out = ""
    for raw in message.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not out or out.endswith(":"):
            out += (" " if out else "") + line
        elif raw[:1].isspace():
            out += ", " + line
        else:
            out += "; " + line
    return out
