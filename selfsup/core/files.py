"""Files written whole or not at all, and the names users give for them.

Every file the project writes whole (checkpoints, embeddings, plots, the
detectron2 pickle, metrics) goes through :func:`atomic_write`: a partial file
under a name only this project makes (`.NAME.selfsup-partial.tmp<PID>`),
fsynced, then renamed over the real name, so the real name holds the old
file or the new one, never a part. A writer killed mid-write leaves its
partial file, which remove_stale_temporaries deletes at the next start; it
deletes nothing else. No torch here: the analysis scripts import this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import stat
from typing import IO, Any, Iterable, Iterator

from selfsup.core.errors import UserError, full_disk_cause, full_disk_error
from selfsup.core.processes import pid_alive

# A file being written: hidden, with a token no user or other program puts
# in a name, and the writer's pid.
PARTIAL_MARK = ".selfsup-partial.tmp"
PARTIAL_PATTERN = re.compile(r"\.(?P<name>.+)\.selfsup-partial\.tmp(?P<pid>\d+)")


def partial_path(path: str | os.PathLike, pid: int | None = None) -> str:
    """Where atomic_write keeps `path` while writing it: the same folder (so
    the final rename stays on one file system), `.NAME.selfsup-partial.tmp<PID>`."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}{PARTIAL_MARK}{os.getpid() if pid is None else pid}")


def _stale_partial(folder, name):
    """Whether `name` is a partial file that a dead writer of ours left: the
    full pattern, a pid that is neither ours nor alive, and a plain file of
    this user (never a link, a folder or someone else's file)."""
    m = PARTIAL_PATTERN.fullmatch(name)
    if not m or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
        return False
    try:
        st = os.lstat(os.path.join(folder, name))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()


def remove_stale_temporaries(folder: str) -> None:
    """Delete the partial files (partial_path) of writers killed mid-write.
    Nothing else: a user's file that merely ends in `.tmp<PID>` stays."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _stale_partial(folder, name):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def _discard(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _sync_folder(folder):
    """fsync the folder, so the rename itself survives a power cut (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lost_errno(exc, tmp):
    """The full disk or file size limit behind a failed write whose error lost
    its errno (numpy's tofile raises "OSError: N requested and M written",
    torch's C++ writer a RuntimeError): read off the partial file's size
    against RLIMIT_FSIZE, and the folder's free space. None otherwise."""
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    try:
        size = os.path.getsize(tmp)
        free = os.statvfs(os.path.dirname(os.path.abspath(tmp)))
    except OSError:
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size >= limit:
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    if free.f_bavail == 0 or (free.f_files and free.f_favail == 0):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", newline: str | None = None, kept: str | None = None, what: str = "file"
) -> Iterator[IO[Any]]:
    """`with atomic_write(path) as f:` write `f`; when the block ends, `path`
    is the new file (flushed, fsynced, renamed over it), or, when it raises,
    what it was before (the partial file is removed). A full disk, quota or
    file size limit becomes one UserError naming the file, its folder and the
    good file that is `kept` (default: `path`'s old version, if any; `what`
    names it: "checkpoint"). The one atomic writer of the project; its
    folder must exist."""
    path = os.fspath(path)
    tmp = partial_path(path)
    try:
        with open(tmp, mode, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException as exc:
        full = full_disk_cause(exc) or _lost_errno(exc, tmp)  # before the partial file frees its space
        _discard(tmp)  # an exception (not a kill, which the next sweep handles): clean up now
        if full is None:
            raise
        if kept is None and os.path.isfile(path):
            kept = path
        raise full_disk_error(full, path, kept, what, cleaned=True) from None
    _sync_folder(os.path.dirname(os.path.abspath(path)))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, what: str = "checkpoint") -> None:
    """Copy `src` to `dst` through atomic_write: a full disk leaves no part
    of `dst`, and names `src` (intact) as the last good `what`."""
    with open(src, "rb") as fin, atomic_write(dst, kept=src, what=what) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


# -- outputs that must not be inputs ---------------------------------------------


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same path once links are
    resolved (also for a file not made yet), or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting(
    output: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike]], what: str = "output"
) -> None:
    """One line when `output` is one of `inputs` ((what the input is, path)
    pairs), through a symlink or a hard link too: a writer never replaces
    what it reads."""
    for name, path in inputs:
        if path and same_file(output, path):
            raise UserError(
                f"{what} '{output}' is {name} '{path}' (the same file): give the output another name; "
                "nothing was written"
            )


def check_name(name: str, flag: str, folder: str | os.PathLike, suffixes: tuple[str, ...] = ("",)) -> str:
    """A file name the user gives for files inside `folder` (`NAME` + each of
    `suffixes`): one plain name, no path separator, not '.' or '..', and the
    files it makes (after links) stay inside `folder`."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    if not name or name in (".", "..") or "\0" in name or any(s in name for s in seps):
        raise UserError(
            f"{flag} {name!r}: expected a plain file name (no '/', not '.' or '..'), used inside '{folder}'"
        )
    root = os.path.realpath(folder)
    for suffix in suffixes:
        target = os.path.realpath(os.path.join(folder, name + suffix))
        if os.path.commonpath([root, target]) != root or target == root:
            raise UserError(f"{flag} {name!r}: '{os.path.join(folder, name + suffix)}' leads out of '{folder}'")
    return name
