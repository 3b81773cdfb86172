"""Up-front checks of flag values, so that bad input fails before any work
with one line naming the flag and what was expected. No torch import: the
data/ scripts use these too."""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Sequence
from typing import NoReturn

from selfsup.core.errors import UserError

# --skip-bad-images: a process-wide policy in the environment, so that
# spawned ranks and DataLoader workers inherit it (selfsup.data.folders reads it).
SKIP_BAD_IMAGES_ENV = "SELFSUP_SKIP_BAD_IMAGES"


def _fmt(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---- the parser every script uses ------------------------------------------


def flag_name(action: argparse.Action) -> str:
    """How a flag is named in its line: all its spellings (-p/--print-freq)."""
    return "/".join(action.option_strings) or action.dest


class FlagParser(argparse.ArgumentParser):
    """argparse's parser made to follow the one-line rule of bad input:

    - every float flag (``type=float``, one value or a list) refuses inf and
      nan right after parsing, with the flag named. No flag of these scripts
      means anything at infinity (an infinite weight decay or loss weight
      gives NaN losses that a run would otherwise blame on the lr), and a
      central check cannot miss a flag added later;
    - argparse's own errors (an unknown flag, a value that is not a number,
      a choice not offered) are one line `error: ...`, without the usage
      block (--help prints it)."""

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            if action.type is float:
                self._refuse_non_finite(action, getattr(namespace, action.dest, None))
        return namespace, extras

    def _refuse_non_finite(self, action: argparse.Action, value: object) -> None:
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            shown = " ".join(_fmt(v) for v in values)
            self.exit(2, f"error: {flag_name(action)} {shown}: expected a finite number\n")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def at_least(value: float | None, low: float, flag: str, what: str | None = None) -> None:
    if value is not None and value < low:
        raise UserError(f"{flag} {_fmt(value)}: expected {what or f'a number >= {_fmt(low)}'}")


def positive(value: float | None, flag: str, what: str = "a positive number") -> None:
    if value is not None and not value > 0:  # also refuses NaN
        raise UserError(f"{flag} {_fmt(value)}: expected {what}")


def non_negative(value: float | None, flag: str, what: str = "a number >= 0") -> None:
    if value is not None and not value >= 0:
        raise UserError(f"{flag} {_fmt(value)}: expected {what}")


def learning_rate(value: float, flag: str = "--lr") -> None:
    # torch keeps the lr as a float32 in the update: beyond its range it fails mid-step
    if not 0 <= value <= 3.4e38:
        raise UserError(f"{flag} {_fmt(value)}: expected a learning rate >= 0 (and finite)")


def in_unit_interval(value: float | None, flag: str) -> None:
    if value is not None and not 0 <= value <= 1:
        raise UserError(f"{flag} {_fmt(value)}: expected a number in [0, 1]")


def seed(value: int | None, flag: str = "--seed") -> None:
    # numpy's generator takes 0 .. 2**32-1; a negative seed would fail deep inside
    if value is not None and not 0 <= value < 2**32:
        raise UserError(f"{flag} {value}: expected an integer in [0, 2**32)")


def output_dir(path: str, flag: str) -> str:
    """Refuse an output folder that could not be written, before any work:
    the path must not be a file, and it (or, while it does not exist yet, its
    nearest existing parent) must be a folder a file can be created in. A
    real probe file, because os.access says yes to root on read-only places."""
    if not path:
        raise UserError(f"{flag} '': expected a folder")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is a file: expected a folder (or a path where one can be made)")
    probe_in = path
    while not os.path.exists(probe_in):
        probe_in = os.path.dirname(probe_in)
    if not os.path.isdir(probe_in):
        raise UserError(f"{flag} '{path}': '{probe_in}' is a file, so no folder can be made there")
    try:
        fd, name = tempfile.mkstemp(prefix=".write_probe", dir=probe_in)
        os.close(fd)
        os.remove(name)
    except OSError as exc:
        raise UserError(f"{flag} '{path}': cannot write in '{probe_in}' ({exc.strerror or exc})") from None
    return path


def output_file(path: str, flag: str) -> str:
    """An output file: not a folder, and its folder writable (output_dir)."""
    if os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is a folder: expected a file name")
    output_dir(os.path.dirname(os.path.abspath(path)), flag)
    return path


# ---- launch settings -----------------------------------------------------


def parse_dist_url(url: str | None, flag: str = "--dist-url") -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of a torch.distributed init URL; host and port are
    None for env:// and file://. Anything else is one line, at once."""
    expected = "expected tcp://HOST:PORT, env:// or file:///PATH"
    parsed = urllib.parse.urlparse(url or "")
    if parsed.scheme == "env":
        return "env", None, None
    if parsed.scheme == "file":
        if not parsed.path:
            raise UserError(f"{flag} '{url}': {expected}")
        return "file", None, None
    if parsed.scheme != "tcp" or not parsed.netloc:
        raise UserError(f"{flag} '{url}': {expected}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:  # a port that is not a number or out of range
        host, port = None, None
    if not host or port is None or not 0 < port < 65536 or not re.fullmatch(r"/?", parsed.path or ""):
        raise UserError(f"{flag} '{url}': {expected} (port 1-65535)")
    return "tcp", host, port


def resolve_host(host: str, flag: str = "--dist-url") -> str:
    """The host's address, or one line: an unknown name would otherwise make
    every rank retry until the rendezvous times out."""
    try:
        return socket.getaddrinfo(host, None)[0][4][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(
            f"{flag}: host '{host}' cannot be resolved ({exc}); give the rank-0 node's name or address"
        ) from None


def is_local_address(address: str) -> bool:
    """Whether `address` belongs to this machine (the rank-0 store binds there)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def port_free(port: int, flag: str = "--dist-url") -> None:
    """Refuse a port that something already listens on, before the rank-0
    store tries to bind it (torch would raise a long error, or wait). The
    store binds every interface, so the probe does too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the store does: TIME_WAIT is fine
        try:
            s.bind(("", port))
        except OSError as exc:
            raise UserError(f"{flag}: port {port} is in use ({exc.strerror or exc}); pick another port") from None


# ---- warnings about flag values that run but train badly -------------------

BN_GROUP_MIN = 8  # images per BatchNorm group below which a warning is printed


def bn_group_size(batch: int, bn_splits: int, processes: int) -> int:
    """Images in the smallest BatchNorm group of a pretraining step: one
    process cuts its `batch` into --bn-splits groups, never of fewer than 2
    images (selfsup.models.split_bn.bn_groups); several processes each
    normalise their own batch (no SyncBN, as the original)."""
    groups = max(1, min(bn_splits, batch // 2)) if processes == 1 else 1
    return batch // groups


def bn_group_warning(batch: int, bn_splits: int, processes: int) -> str | None:
    """A warning line when a BatchNorm group holds fewer than BN_GROUP_MIN
    images (`batch` is one process's share of -b), else None. Statistics of
    2-4 images swing from step to step: a MobileNet-v4 student at -b 16 with
    the default 8 groups had running variances of 2.8e16 after 3 steps."""
    size = bn_group_size(batch, bn_splits, processes)
    if size >= BN_GROUP_MIN:
        return None
    if processes == 1:
        where = f"-b/--batch-size {batch} in one process, --bn-splits {bn_splits}"
        enough = batch // BN_GROUP_MIN  # the most groups of BN_GROUP_MIN images this batch holds
        fix = f"lower --bn-splits to {enough} or " if enough >= 1 else ""
        fix += f"raise -b/--batch-size to {BN_GROUP_MIN * max(bn_splits, 1)} or more"
    else:
        where = f"each of the {processes} processes normalises its own {batch} images of -b/--batch-size"
        fix = f"raise -b/--batch-size (shared by a node's processes) so that each process gets {BN_GROUP_MIN} or more"
    return (
        f"=> warning: BatchNorm groups of {size} image{'s' if size != 1 else ''} ({where}): statistics of so few "
        f"images are noisy and the running variances can explode; {fix}"
    )
