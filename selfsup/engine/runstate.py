"""What makes a run folder safe to kill and to share (docs/resume.md):

- RunLock: one run per folder, by the kernel's file lock (flock) on
  run.lock; the file holds pid, host and the pid's start time, which name
  the holder and let a dead run's file be taken over;
- run identity: the flags that define a run, stored in its checkpoints and
  compared when a rerun would resume one;
- pre-emption: SIGTERM/SIGUSR1 only set a flag; the training loop saves at
  the next iteration boundary and exits 0;
- RNG states of every rank, and agreement between DDP ranks on a flag.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import random
import signal
import socket
import sys
from typing import Any, Callable, Iterable, Iterator, NoReturn

import numpy as np
import torch

from selfsup.core import distributed as du
from selfsup.core.checkpoint import latest_checkpoint
from selfsup.core.errors import UserError
from selfsup.core.processes import (
    install_signal_handlers,
    pid_alive,
    pid_start_time,
    restore_signal_handlers,
    stop_signal,
)

LOCK_NAME = "run.lock"


def _me():
    return f"{os.getpid()} {socket.gethostname()} {pid_start_time(os.getpid())}"


class RunLock:
    """`<folder>/run.lock`, held with the kernel's file lock (flock) for as
    long as the run lasts, so two runs can never hold it at once. The file's
    content (pid, host, the pid's start time) names the holder in messages,
    and tells a file left by a dead run (whose flock the kernel dropped) from
    one that a run on another machine, or a live process without the flock
    (an older version of this code), may still be using. `flag` names the
    folder's option in messages (--ckpt-dir, --dump_path)."""

    # Each retry means a holder released (deleted) the file between our
    # open and our flock; a bound only keeps a pathological churn finite.
    RETRIES = 200

    def __init__(self, folder: str, flag: str = "--ckpt-dir"):
        self.folder, self.flag = folder, flag
        self.path = os.path.join(folder, LOCK_NAME)
        self.held = False
        self._fd: int | None = None
        self._owner: int | None = None

    def _holder(self, fd: int | None = None):
        """(pid or None, host, start time) that the lock file names, or None
        when there is no file."""
        try:
            if fd is None:
                with open(self.path) as f:
                    text = f.read()
            else:
                text = os.pread(fd, 4096, 0).decode(errors="replace")
        except FileNotFoundError:
            return None
        parts = text.split()
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        host = parts[1] if len(parts) > 1 else "?"
        start = parts[2] if len(parts) > 2 else "None"
        return pid, host, start

    def _is_live(self, holder):
        pid, host, start = holder
        if pid is None:
            return False  # an empty or garbled lock: a writer died mid-write
        if host != socket.gethostname():
            return True  # cannot look at another machine's processes
        if pid == os.getpid():
            return False  # ours, left by an earlier run in this process
        if not pid_alive(pid):
            return False
        now = pid_start_time(pid)
        return start in ("None", None) or now is None or now == start

    def _in_use(self, holder, unlocked: bool = False) -> UserError:
        """The one line for a folder in use; `unlocked`: we hold the kernel
        lock, so only a process out of this machine's sight can be using it."""
        pid, host, _ = holder if holder and holder[0] is not None else ("?", "?", None)
        where = (
            f"if no run on {host} is using it, delete the lock file (no process of this machine holds it, "
            f"and {host}'s processes cannot be seen from here)"
            if unlocked and host not in ("?", socket.gethostname())
            else "if no run is using it, delete the lock file"
        )
        return UserError(
            f"{self.flag} '{self.folder}' is in use by another run (pid {pid} on {host}, "
            f"{self.path}): wait for it or use another {self.flag}; {where}"
        )

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file `fd` has open (a
        releasing holder deletes it, and a new one may have been made)."""
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def _flock(self, fd: int) -> bool:
        """Take the kernel lock on `fd` without waiting: False when the file
        was deleted meanwhile (retry); UserError when a live run holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self._names(fd):
                return False  # its holder is releasing it: try the new file
            raise self._in_use(self._holder(fd)) from None
        except OSError as exc:  # a file system without flock: the content alone decides
            print(f"=> {self.path}: no file locks here ({exc.strerror}); the lock only names its run", flush=True)
        return self._names(fd)

    def _claim(self, fd: int) -> None:
        """With the kernel lock held: refuse a file that a live run may still
        use without the kernel lock (another host's, an older version's), else
        take it, saying so when it was a dead run's."""
        holder = self._holder(fd)
        if holder is not None and holder[0] is not None and self._is_live(holder):
            raise self._in_use(holder, unlocked=True)
        if holder is not None and holder[0] is not None and holder[0] != os.getpid():
            print(f"=> took over the stale lock of pid {holder[0]} in '{self.folder}'", flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_me() + "\n").encode(), 0)

    def acquire(self) -> RunLock:
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.flag} '{self.folder}' cannot be created ({exc.strerror})") from None
        for _ in range(self.RETRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise UserError(f"{self.flag} '{self.folder}' is not writable ({exc.strerror})") from None
            try:
                if self._flock(fd):
                    self._claim(fd)
                    self._fd, self._owner, self.held = fd, os.getpid(), True
                    return self
            except BaseException:
                os.close(fd)  # drops the kernel lock, leaves the file as it was
                raise
            os.close(fd)
        raise UserError(f"could not take the lock {self.path}: another run keeps replacing it")

    def release(self) -> None:
        """Delete the lock file, then drop the kernel lock: whoever opened the
        file meanwhile sees it is no longer the one the path names. A forked
        child (a loader worker) that inherited the lock leaves it alone."""
        if not self.held or self._owner != os.getpid():
            return
        self.held = False
        fd, self._fd = self._fd, None
        try:
            if self._names(fd):
                os.remove(self.path)
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class NoLock:
    """Stands in for RunLock on ranks other than 0 (rank 0 holds the folder)."""

    def acquire(self) -> NoLock:
        return self

    def release(self) -> None:
        pass

    __enter__ = acquire

    def __exit__(self, *exc):
        pass


def folder_lock(folder: str, flag: str = "--ckpt-dir") -> RunLock | NoLock:
    """The lock of `folder` on rank 0; every rank stops if rank 0 cannot take it."""
    lock, error = NoLock(), None
    if du.is_main_process():
        try:
            lock = RunLock(folder, flag).acquire()
        except UserError as exc:
            error = exc
    if du.world_size() > 1 and any_rank(error is not None, _device()):
        stop_all(error or UserError(f"rank 0 could not lock {flag} '{folder}'"))
    if error is not None:
        raise error
    return lock


# -- run identity ---------------------------------------------------------------


def file_identity(path: str | None) -> str | list:
    """Path, size and mtime of a file a run depends on (a teacher, a
    pretrained backbone): enough to tell another or a rewritten file."""
    if not path:
        return ""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.abspath(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.device):
        return str(value)
    return value


def run_identity(args: argparse.Namespace, keys: Iterable[str], files: Iterable[str] = ()) -> dict[str, Any]:
    """{flag: value} of the flags in `keys` that args has, plus the identity
    of each file flag in `files`: what a checkpoint stores as "run"."""
    ident = {k: _plain(getattr(args, k)) for k in keys if hasattr(args, k)}
    for k in files:
        if hasattr(args, k):
            ident[k] = file_identity(getattr(args, k))
    return ident


# Optimisation flags: a rerun (the default resume) must repeat them; a
# --resume PATH named by hand may change them, as the original allowed.
SCHEDULE_KEYS = ("lr", "momentum", "weight_decay", "schedule", "gamma", "cos", "base_lr", "final_lr", "wd")


def _show(value):
    if isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and os.path.isabs(value[0]):
        return f"'{value[0]}'"
    return repr(value) if isinstance(value, str) else str(value)


def check_identity(
    saved: Any,
    current: dict[str, Any],
    path: str,
    hint: str,
    flag_name: Callable[[str], str] = lambda k: "--" + k.replace("_", "-"),
) -> None:
    """One line naming every flag whose value differs from the run that
    wrote `path`. Checkpoints without a "run" entry (older ones, official
    releases) are not checked."""
    if not isinstance(saved, dict):
        return
    diffs = []
    for key, now in current.items():
        if key not in saved or saved[key] == now:
            continue
        was = saved[key]
        if isinstance(was, list) and isinstance(now, list) and len(was) == len(now) == 3 and was[0] == now[0]:
            diffs.append(f"{flag_name(key)} '{now[0]}' changed since (size or modification time differ)")
        else:
            diffs.append(f"{flag_name(key)} {_show(was)} (now {_show(now)})")
    if diffs:
        raise UserError(f"'{path}' was written by a run with other flags: {', '.join(diffs)}; {hint}")


def moco_flag_name(key: str) -> str:
    # -b is stored per process (the script divides it among a node's processes)
    names = {
        "arch": "-a",
        "batch_size": "-b (per process)",
        "world_size": "the number of processes",
        "weight_decay": "--wd",
        "method": "the script",
    }
    return names.get(key, "--" + key.replace("_", "-"))


# -- previous runs ----------------------------------------------------------------


def _top_name_inside(path: str, folder: str) -> str | None:
    """The first component of `path` below `folder` (links resolved), or None
    when `path` does not lie inside it."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(folder))
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        return None
    return rel.split(os.sep)[0]


def check_run_folder(
    folder: str,
    flag: str,
    is_output: Callable[[str], bool],
    foreign: Callable[[str], str | None],
    inputs: dict[str, str | None],
    what: str,
) -> None:
    """Before a run touches `folder`: refuse a folder holding another kind of
    run's files (foreign(name) says whose), whose logs and tb/ would be moved
    or mixed with this run's, and an input file (a teacher, a pretrained
    backbone) that is one of this run's outputs there (is_output(top-level
    name)): the run that reads it would move it aside, prune or overwrite it."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        names = []
    for name in names:
        kind = foreign(name)
        if kind:
            raise UserError(f"{flag} '{folder}' holds {kind} files ({name}): give this {what} a folder of its own")
    for input_flag, path in inputs.items():
        top = _top_name_inside(path, folder) if path and os.path.exists(path) else None
        if top is not None and is_output(top):
            raise UserError(
                f"{input_flag} '{path}' is inside {flag} '{folder}', where this {what} moves aside, prunes and "
                f"writes its own {top}: copy it out of that folder, or use another {flag}"
            )


def archive_previous_run(folder: str, names: Iterable[str], flag: str = "--ckpt-dir") -> str | None:
    """Move `names` (files of a run this one does not continue) into
    `folder`/previous-N, so nothing of it is overwritten or read as ours."""
    present = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if not present:
        return None
    n = 1
    while os.path.exists(os.path.join(folder, f"previous-{n}")):
        n += 1
    dest = os.path.join(folder, f"previous-{n}")
    os.makedirs(dest)
    for name in present:
        os.replace(os.path.join(folder, name), os.path.join(dest, name))
    print(f"=> {flag} '{folder}' held another run's files ({', '.join(present)}): moved to '{dest}'", flush=True)
    return dest


@contextlib.contextmanager
def owned_run(folder: str, flag: str = "--ckpt-dir") -> Iterator[None]:
    """For the duration of one run: the folder's lock, and the stop signals
    turned into a flag the training loop reads at iteration boundaries."""
    lock = folder_lock(folder, flag)
    install_signal_handlers()
    try:
        yield
    finally:
        restore_signal_handlers()
        lock.release()


# -- ranks --------------------------------------------------------------------------


def _device():
    if torch.cuda.is_available() and torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is true on any (one scalar all-reduce)."""
    if du.world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device or _device())
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def stop_all(error: BaseException) -> NoReturn:
    """Every rank stops together: one line from rank 0 (a UserError in a
    single process), exit status 2 everywhere."""
    if du.world_size() == 1:
        raise error
    if du.is_main_process():
        print(f"error: {error}", file=sys.stderr, flush=True)
    du.barrier()  # rank 0 has printed before any rank exits
    raise SystemExit(2)


def on_rank0(fn: Callable[[], Any]) -> Any:
    """fn() computed on rank 0 alone and handed to every rank (its UserError
    stops every rank with rank 0's line). What a rerun resumes from is rank
    0's to say: only rank 0 writes checkpoints, so on a multi-node run the
    other nodes' --ckpt-dir may not hold them at all."""
    if du.world_size() == 1:
        return fn()
    result, message = None, None
    if du.is_main_process():
        try:
            result = fn()
        except UserError as exc:
            message = str(exc)
    box = [(result, message)]
    torch.distributed.broadcast_object_list(box, src=0, device=_device())
    result, message = box[0]
    if message is not None:
        stop_all(UserError(message))
    return result


def gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if du.world_size() == 1:
        return [obj]
    out = [None] * du.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# -- RNG states ---------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA generator states, as plain values
    and tensors (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_rng_state(state: Any) -> None:
    """Raise (TypeError, ValueError, KeyError, ...) unless `state` is one
    that restore_rng takes: tried on the live generators, then undone, so a
    malformed file is refused before the run starts, not at its resume point."""
    if not isinstance(state, dict):
        raise TypeError(f"expected a dict of generator states, got {type(state).__name__}")
    before = capture_rng()
    try:
        restore_rng(state)
    finally:
        restore_rng(before)


# -- the iteration boundary -------------------------------------------------------------


class Preempted(SystemExit):
    """Raised on every rank after the stop checkpoint is written: exit 0."""

    def __init__(self):
        super().__init__(0)


def boundary_hook(
    save: Callable[[int, int], str], save_freq: int, device: torch.device | None = None
) -> Callable[[int, int], None]:
    """hook(epoch, i) for ResumableLoader: called when `i` batches of `epoch`
    are done (0 < i < len). Every `save_freq` batches, and on a stop signal
    (agreed by all ranks), `save(epoch, i)` writes a mid-epoch checkpoint
    (a collective: every rank calls it) and returns its path."""

    def hook(epoch, i):
        if _PREEMPT_AT == (epoch, i):
            _debug_preempt()
        stop = any_rank(stop_signal() is not None, device)
        if stop or (save_freq and i % save_freq == 0):
            path = save(epoch, i)
            if stop:
                announce_stop(path, epoch, i)
        if _KILL_AT == (epoch, i):
            du.barrier()  # rank 0's file is complete before any rank dies
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


# Debug hook for the tests of docs/resume.md: SELFSUP_DEBUG_KILL=EPOCH:BATCH
# makes every rank kill itself (SIGKILL, as `kill -9`) at that iteration
# boundary, after whatever the boundary saves: a crash at a known place,
# without racing a signal against the run.
_KILL_AT = (
    tuple(int(x) for x in os.environ["SELFSUP_DEBUG_KILL"].split(":")) if os.environ.get("SELFSUP_DEBUG_KILL") else None
)


# Debug hook for tests/test_submitit.py: SELFSUP_DEBUG_PREEMPT=EPOCH:BATCH makes
# every rank, at that boundary, send the scheduler's warning signal (submitit's:
# $SUBMITIT_PREEMPT_SIGNAL, default USR2) to its parent, the job task of
# tools/run_with_submitit.py, and wait for the stop signal the task passes back:
# a pre-emption at a known iteration that goes through the whole requeue path.
_PREEMPT_AT = (
    tuple(int(x) for x in os.environ["SELFSUP_DEBUG_PREEMPT"].split(":"))
    if os.environ.get("SELFSUP_DEBUG_PREEMPT")
    else None
)


def _debug_preempt() -> None:
    import time

    os.kill(os.getppid(), getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")))
    deadline = time.monotonic() + 120  # a parent that never answers: carry on unstopped
    while stop_signal() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def announce_stop(path: str, epoch: int, i: int | None = None) -> NoReturn:
    if du.is_main_process():
        where = f"epoch {epoch} iteration {i}" if i is not None else f"the end of epoch {epoch}"
        print(
            f"=> {stop_signal() or 'stop signal'}: saved '{path}' at {where}; rerun the same command to continue",
            flush=True,
        )
    # Every rank calls this after agreeing on the stop. A launcher that tears a
    # job down when its first process exits (srun --kill-on-bad-exit, torchrun's
    # agents) must not meet rank 0 still writing the file.
    du.barrier()
    raise Preempted()


# -- non-finite losses ------------------------------------------------------------------

# Debug hook for the tests of docs/resume.md: SELFSUP_DEBUG_NAN=RANK:EPOCH:BATCH
# makes that rank's loss NaN at that batch (read once; off when unset).
_POISON = (
    tuple(int(x) for x in os.environ["SELFSUP_DEBUG_NAN"].split(":")) if os.environ.get("SELFSUP_DEBUG_NAN") else None
)


def check_finite(
    loss: torch.Tensor,
    epoch: int,
    i: int,
    hint: str | Callable[[], str],
    folder: str | None,
    device: torch.device | None = None,
) -> None:
    """Before the backward pass: stop every rank together, with one line,
    when the loss is not finite on any of them; no step is taken and the
    checkpoints already written stay as they are. `hint` says what to do (a
    callable: worked out only when the loss is not finite)."""
    if _POISON is not None and _POISON == (du.rank(), epoch, i):
        loss = loss * float("nan")
    bad = not bool(torch.isfinite(loss.detach()).all())
    if du.world_size() > 1:
        t = torch.tensor([float(bad)], device=device or _device())
        torch.distributed.all_reduce(t)
        count = int(t.item())
    else:
        count = int(bad)
    if count:
        where = f" on {count} of {du.world_size()} processes" if du.world_size() > 1 else ""
        value = f" {loss.item()}" if bad else " non-finite"
        last = latest_checkpoint(folder) if folder else None
        kept = f"; the last checkpoint '{last}' is unchanged" if last else ""
        text = hint() if callable(hint) else hint
        stop_all(UserError(f"loss became{value}{where} at epoch {epoch} batch {i}: {text}{kept}"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
