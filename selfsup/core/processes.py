"""Process facts and stop signals, below every layer that needs them: the
lock files (is a holder alive?), the checkpoint writer (is a temporary's
writer alive?) and the data-loader workers (which leave stop signals to the
main process)."""

from __future__ import annotations

import os
import signal
import sys


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def pid_start_time(pid: int) -> str | None:
    """The pid's start time in clock ticks (Linux /proc), or None: tells a
    live holder from a new process that got a dead holder's pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
_received = []
_previous = {}


def _on_signal(signum, frame):
    _received.append(signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGUSR1 set a flag the training loop reads at each iteration
    boundary (a handler that saved right away could interrupt a step)."""
    _received.clear()
    if sys.platform == "win32":
        return
    for name in STOP_SIGNALS:
        sig = getattr(signal, name)
        try:
            _previous[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread: leave signals alone
            pass


def restore_signal_handlers() -> None:
    for sig, handler in _previous.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, TypeError):
            pass
    _previous.clear()


def ignore_stop_signals() -> None:
    """For data-loader workers: the main process saves, then ends them."""
    for name in STOP_SIGNALS:
        try:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        except (ValueError, AttributeError):
            pass


def stop_signal() -> str | None:
    """Name of the first stop signal received, or None."""
    return signal.Signals(_received[0]).name if _received else None
