"""One-line errors for bad input.

Scripts raise :class:`UserError` for anything the user can fix (a missing
folder, a wrong checkpoint, a flag that does not fit) and wrap their entry
point in :func:`cli_main`, which prints the message on one line and exits
with status 2 instead of showing a traceback. A full disk (or quota, or file
size limit) is something the user can fix too: the writers say so with the
folder and the last good file (selfsup.core.checkpoint.atomic_write), and
cli_main turns any other write that meets one into the same kind of line.
"""

from __future__ import annotations

import errno
import functools
import gc
import os
import sys
from typing import Any, Callable, NoReturn

_PREFIX = "selfsup.core.errors.UserError: "


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback."""


# The write errors the user fixes by freeing space or raising a limit:
# errno -> (what happened, what to do; {where} is " in 'FOLDER'" or "").
FULL = {
    errno.ENOSPC: ("the disk is full", "free space{where}"),
    errno.EDQUOT: ("the disk quota is used up", "free space{where} (or raise the quota)"),
    errno.EFBIG: ("the file size limit is reached", "raise the file size limit (ulimit -f)"),
}


def full_disk_cause(exc: BaseException | None) -> OSError | None:
    """The OSError ENOSPC, EDQUOT or EFBIG behind `exc`: itself, or one in its
    __cause__/__context__ chain (torch.save reports a failed write as a
    RuntimeError whose context is the OSError); None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_disk_error(
    exc: OSError, path: str | None = None, kept: str | None = None, what: str = "file", cleaned: bool = False
) -> UserError:
    """The one line for a write that `exc` (ENOSPC/EDQUOT/EFBIG) stopped:
    what is full, the file and its folder, and, when the writer `cleaned` up
    its partial file, which good file is `kept` (the last `what`)."""
    reason, fix = FULL[exc.errno]
    reason = f"{reason} ({exc.strerror or os.strerror(exc.errno)})"
    name = path or (exc.filename if isinstance(exc.filename, str) else None)
    if not name:
        return UserError(f"{reason} while writing: {fix.format(where='')} and rerun")
    folder = os.path.dirname(os.path.abspath(name))
    fix = fix.format(where=f" in '{folder}'")
    if not cleaned:
        return UserError(f"{reason} writing '{name}' in '{folder}': {fix} and rerun")
    left = f"'{kept}', the last good {what}, is intact" if kept else f"there is no earlier {what} to keep"
    return UserError(f"{reason} writing '{name}' in '{folder}': no partial file is left and {left}; {fix} and rerun")


def as_user_error(exc: BaseException) -> UserError | None:
    """`exc` as the one line the user sees: a UserError itself, a full disk
    behind any exception as full_disk_error's line; None for anything else
    (a bug: its traceback is shown)."""
    if isinstance(exc, UserError):
        return exc
    full = full_disk_cause(exc)
    return full_disk_error(full) if full is not None else None


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
    """Decorator for script entry points: UserError (or a full disk met by any
    write) -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        error = None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = as_user_error(exc)
            if error is None:
                raise
        exit_with(error)  # outside the except block, which would keep the traceback alive

    return wrapper
