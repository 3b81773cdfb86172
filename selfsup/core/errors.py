"""One-line errors for bad input.

Scripts raise :class:`UserError` for anything the user can fix (a missing
folder, a wrong checkpoint, a flag that does not fit) and wrap their entry
point in :func:`cli_main`, which prints the message on one line and exits
with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import functools
import gc
import sys
from typing import Any, Callable, NoReturn

_PREFIX = "selfsup.core.errors.UserError: "


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an exception, also when it was re-raised by a
    DataLoader worker (whose message carries the worker's traceback)."""
    text = str(exc).strip()
    if "Traceback" in text:  # re-raised from a worker: the cause is the last line
        text = text.splitlines()[-1]
        if text.startswith(_PREFIX):
            text = text[len(_PREFIX) :]
    return " ".join(text.split())


def exit_with(exc: BaseException) -> NoReturn:
    """Print `exc` as one `error:` line and exit 2, after dropping its
    traceback: the frames it holds keep data-loader iterators alive, and only
    a freed iterator ends its workers cleanly before the interpreter exits."""
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    exc.__traceback__ = None
    del exc
    gc.collect()
    sys.exit(2)


def cli_main(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for script entry points: UserError -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        error = None
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            error = exc
        exit_with(error)  # outside the except block, which would keep the traceback alive

    return wrapper
