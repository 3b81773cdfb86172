"""One scan of a big data folder per node: the first process of a node to
scan it writes what it found to a cache file; the node's other ranks wait
for it and read the file instead of listing the same 1.28 M files again,
and so do later runs while the tree is unchanged.

Where: $SELFSUP_SCAN_CACHE (a folder; `off` turns the cache off), else
`<temp dir>/selfsup-scan-cache-<uid>`: node-local on most clusters, which
is what makes it one scan per node. The folder must be the user's own and
writable by nobody else (a planted file would decide what a run trains on);
otherwise the cache is not used.

When a cache file is used, for the same tree only:
- it was written for this root, spelled the same (the samples' paths are
  built from it) and with the same real path, by the same scan rules
  (a digest of selfsup/data/scan.py and torchvision's image extensions);
- every folder the scan listed (the root, each class folder, each folder
  inside one) has the same device, inode, mtime and ctime now: adding,
  removing or renaming a file or folder anywhere in the tree changes its
  parent folder's mtime, so any change to what the scan would list
  invalidates the file, and another tree moved into the same path has
  other inodes;
- a folder whose mtime was within RACY_NS of the scan's start is not
  trusted (a change in the same clock tick would leave its mtime
  unchanged), and the scan is then not cached;
- the arrays are consistent (offsets rise to the blob's end, classes in
  range).
What the cache cannot see is a change outside the tree: an image link
whose target is deleted later is met when the loader reads it, as an
unreadable image.

Trees under MIN_SAMPLES images are not cached: they scan in well under a
second. A cache file that cannot be written (a full disk) is skipped; the
run goes on with its own scan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write, remove_stale_temporaries
from selfsup.data.samples import SampleTable

ENV = "SELFSUP_SCAN_CACHE"
FORMAT = 1
MIN_SAMPLES = 20_000
RACY_NS = 2_000_000_000

# A folder the scan listed: (path, device, inode, mtime_ns, ctime_ns).
Listed = tuple[str, int, int, int, int]


def listed(path: str) -> Listed:
    """The record of folder `path`, taken before it is listed (a change
    after this shows as a newer mtime next time)."""
    st = os.stat(path)
    return (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def cache_folder() -> str | None:
    """The cache folder, made if needed; None when the cache is off or the
    folder is not safe to trust."""
    value = os.environ.get(ENV, "")
    if value.lower() == "off":
        return None
    folder = value or os.path.join(tempfile.gettempdir(), f"selfsup-scan-cache-{os.getuid()}")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder) if value else os.lstat(folder)  # in a shared temp dir, not a link someone put there
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        _warn_once(folder, "it is not a folder that is yours alone (a link, another owner, or writable by others)")
        return None
    return folder


_warned: set[str] = set()


def _warn_once(folder, why):
    if folder not in _warned:
        _warned.add(folder)
        print(f"=> scan cache '{folder}' not used: {why}", file=sys.stderr, flush=True)


def cache_file(folder: str, root: str) -> str:
    """The file for `root` in `folder`: named by the root as given and its real path."""
    key = json.dumps([root, os.path.realpath(root)]).encode()
    return os.path.join(folder, hashlib.sha256(key).hexdigest()[:32] + ".npz")


def cached_scan(
    root: str, rules: str, scan: Callable[[], tuple[list[str], SampleTable, list[Listed]]]
) -> tuple[list[str], SampleTable]:
    """(classes, table) of `root`: from its valid cache file, else from
    `scan()` (which returns the folders it listed too), cached when the tree
    is big and was not changing. Processes of a node that want the same
    root take turns on a lock, so one scans and the others read."""
    folder = cache_folder()
    if folder is None:
        return scan()[:2]
    path = cache_file(folder, root)
    with _locked(path + ".lock"):
        hit = load(path, root, rules)
        if hit is not None:
            return hit
        stored = False
        try:
            started = time.time_ns()
            classes, table, folders = scan()
            big = len(table) >= MIN_SAMPLES and not _racy(folders, started)
            stored = big and store(path, root, rules, classes, table, folders)
        finally:
            if not stored:
                # Nothing to wait for (a small or changing tree, or a refused
                # one): leave no lock file behind. A process already waiting on
                # it then scans alongside a newcomer: a second scan, no harm.
                with contextlib.suppress(OSError):
                    os.unlink(path + ".lock")
        return classes, table


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """flock on `path` (released by the kernel if the holder dies); without
    a lock (a filesystem that refuses one) each process scans for itself."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


def _racy(folders, started):
    """Was a folder's listing changed too recently to trust its mtime? (A
    later change in the same tick would leave it equal. A recent ctime
    alone does no harm: a listing change after it sets mtime to now, which
    differs from the older mtime recorded.)"""
    return any(mtime >= started - RACY_NS for _, _, _, mtime, _ in folders)


def store(path: str, root: str, rules: str, classes: list[str], table: SampleTable, folders: list[Listed]) -> bool:
    """Write the cache file (atomically); False when it could not be written."""
    meta = {
        "format": FORMAT,
        "rules": rules,
        "root": root,
        "real": os.path.realpath(root),
        "prefix": table.prefix,
        "classes": classes,
        "folders": [list(f) for f in folders],
    }
    arrays = dict(
        meta=np.frombuffer(json.dumps(meta).encode("ascii"), dtype=np.uint8),
        blob=table.blob,
        offsets=table.offsets,
        targets=table.targets,
    )
    try:
        remove_stale_temporaries(os.path.dirname(path))
        with atomic_write(path, what="scan cache file") as f:
            np.savez(f, **arrays)
    except (OSError, UserError):  # a full disk or a read-only temp dir: the scan is still good
        return False
    return True


def load(path: str, root: str, rules: str) -> tuple[list[str], SampleTable] | None:
    """(classes, table) from the cache file when it is valid for `root`
    (the rules in the module docstring); None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("ascii"))
            if not _same_tree(meta, root, rules):
                return None
            table = SampleTable(meta["prefix"], z["blob"], z["offsets"], z["targets"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None  # damaged or foreign: scan again, and the new file replaces it
    return (meta["classes"], table) if _consistent(table, len(meta["classes"])) else None


def _same_tree(meta, root, rules):
    if (meta.get("format"), meta.get("rules"), meta.get("root")) != (FORMAT, rules, root):
        return False
    if meta.get("real") != os.path.realpath(root) or not meta.get("folders"):
        return False
    if meta["folders"][0][0] != root or not meta["prefix"] == os.path.join(root, ""):
        return False
    for path, *record in meta["folders"]:
        try:
            if list(listed(path)[1:]) != record:
                return False
        except OSError:
            return False
    return True


def _consistent(table, n_classes):
    offsets, targets = table.offsets, table.targets
    if len(targets) == 0 or offsets[0] != 0 or offsets[-1] != len(table.blob):
        return False
    if np.any(np.diff(offsets) <= 0):
        return False
    return bool(targets.min() >= 0 and targets.max() < n_classes)
