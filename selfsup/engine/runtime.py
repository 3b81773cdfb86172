"""The process runtime of every script: which device a process uses, its
CPU threads and denormal handling, and the process group it joins.

Three ways in, one setup (`start_process`) underneath:
- torchrun / ``python -m torch.distributed.launch``: env:// from RANK,
  WORLD_SIZE and LOCAL_RANK (or, on old torch.distributed.launch, the
  script's ``--local_rank`` flag);
- ``--multiprocessing-distributed`` (the MoCo scripts): `launch` spawns the
  processes itself (NCCL on GPUs, gloo on CPU); one process in all runs in
  place, without a group;
- neither: one process on ``--gpu`` / ``--device`` (or the first GPU, or
  the CPU).

The MoCo-family scripts call ``launch(worker, args)``: their ``-b`` and
``-j`` are per node and are divided among its processes. The SwAV scripts
call ``launch_in_place(worker, args)``: they never spawn, their
``--batch_size`` is per process, and their flags are spelt ``--dist_url``,
``--world_size``, ``--rank``, ``--local_rank``, ``--device``.
Either way the worker sees args.rank, world_size, gpu, device and distributed.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core import checks
from selfsup.core.errors import UserError, as_user_error, exit_with, one_line
from selfsup.core.processes import STOP_SIGNALS


@dataclass(frozen=True)
class Placement:
    """Where one process sits among all of a run's processes."""

    rank: int  # among all processes
    world_size: int  # all processes
    local_rank: int  # among this node's processes: its GPU index
    per_node: int  # processes on this node


@dataclass(frozen=True)
class GroupFlags:
    """The spelling of the launch flags in a script family, for messages."""

    url: str = "--dist-url"
    timeout: str = "--dist-timeout"


MOCO_FLAGS = GroupFlags()
SWAV_FLAGS = GroupFlags("--dist_url", "--dist_timeout")


def launcher_placement(local_rank_flag: int | None = None) -> Placement | None:
    """The placement torchrun or torch.distributed.launch gave this process
    (None: not started by a launcher). $LOCAL_RANK wins over the flag that
    old torch.distributed.launch passes (--local_rank N)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    local = os.environ.get("LOCAL_RANK")
    if local is None and local_rank_flag is None:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    return Placement(
        int(os.environ["RANK"]),
        world_size,
        int(local if local is not None else local_rank_flag),
        int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
    )


def start_process(
    args: Any, place: Placement, gpu: int | None, backend: str, url: str, flags: GroupFlags = MOCO_FLAGS
) -> Any:
    """Set this process up: device (GPU `gpu`, or the CPU when None), CPU
    threads and denormals, then the process group when there are several
    processes. Fills args.rank, world_size, gpu, device and distributed."""
    if gpu is not None:
        torch.cuda.set_device(gpu)
        args.gpu, args.device = gpu, torch.device("cuda", gpu)
    else:
        args.gpu, args.device = None, torch.device("cpu")
        # Denormal floats make CPU kernels many times slower (near-uniform SwAV
        # predictions produce many of them) and do not change results here.
        torch.set_flush_denormal(True)
        if place.per_node > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // place.per_node))
    args.rank, args.world_size = place.rank, place.world_size
    args.distributed = place.world_size > 1
    if args.distributed:
        init_group(
            backend if gpu is not None else "gloo",
            url,
            place.world_size,
            place.rank,
            getattr(args, "dist_timeout", 300.0),
            flag=flags.url,
            timeout_flag=flags.timeout,
        )
    return args


def finish_process(args: Any) -> None:
    """Leave the process group start_process joined, if any."""
    if getattr(args, "distributed", False) and dist.is_initialized():
        dist.destroy_process_group()


# -- the MoCo-family scripts: they may spawn their processes ---------------------


def launch(worker: Callable[[Any], Any], args: Any) -> Any:
    """Run `worker(args)` in every process of the run (see the module docstring)."""
    place = launcher_placement()
    if place is not None:
        args.world_size, args.dist_url = place.world_size, "env://"
        return _run(place, worker, args)
    n_gpus = torch.cuda.device_count()
    if args.multiprocessing_distributed:
        if n_gpus == 0 and args.cpu_procs < 1:
            raise UserError(f"--cpu-procs {args.cpu_procs}: expected at least 1")
        per_node = n_gpus or args.cpu_procs
        args.world_size = per_node * max(args.world_size, 1)
        if args.world_size == 1:
            return _run(Placement(0, 1, 0, 1), worker, args)
        check_rendezvous(args.dist_url, max(args.rank, 0))
        try:
            _spawn_node(per_node, worker, args)
        except mp.ProcessExitedException as exc:  # the child already printed its error
            sys.exit(exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1)
        return None
    args.world_size = max(args.world_size, 1)
    return _run(Placement(max(args.rank, 0), args.world_size, 0, 1), worker, args, single=True)


def _spawn_node(per_node: int, worker: Callable[[Any], Any], args: Any) -> None:
    """mp.spawn this node's processes and wait for them. A stop signal sent
    to this parent alone (`kill PID`, or a scheduler that signals only the
    job's main process) is passed on to every child, which saves at its next
    iteration and exits 0, as when each process receives it."""
    context = mp.spawn(_spawned, nprocs=per_node, args=(per_node, worker, args), join=False)

    def forward(signum, frame):
        for child in context.processes:
            if child.is_alive():
                os.kill(child.pid, signum)

    previous = {}
    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, forward)
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawned(local_rank, per_node, worker, args):
    error = None
    try:
        node = max(args.rank, 0)
        _run(Placement(node * per_node + local_rank, args.world_size, local_rank, per_node), worker, args)
    except Exception as exc:  # a UserError, or a full disk met by any write: one line
        error = as_user_error(exc)
        if error is None:
            raise
    if error is not None:
        exit_with(error)


def _run(place, worker, args, single=False):
    args = copy.copy(args)
    cuda = torch.cuda.is_available()
    if args.gpu is not None and not cuda:
        raise UserError(f"--gpu {args.gpu} given, but no CUDA GPU is visible")
    gpu = None
    if cuda:
        gpu = (args.gpu if args.gpu is not None else 0) if single else place.local_rank
    start_process(args, place, gpu, args.dist_backend, args.dist_url)
    # -b and -j are per node (the original's): each of its processes takes its share.
    args.batch_size = args.batch_size // place.per_node
    if args.batch_size < 1:
        raise UserError(f"-b/--batch-size is smaller than the {place.per_node} processes per node")
    args.workers = (args.workers + place.per_node - 1) // place.per_node
    try:
        return worker(args)
    finally:
        finish_process(args)


# -- the SwAV scripts: started by a launcher, or one process ----------------------


def init_distributed(args: Any) -> Any:
    """Join the launcher's process group (or run as the only process) on
    --device: auto = a GPU when one is visible. Also fills args.local_rank."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda given, but no CUDA GPU is visible")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    place = launcher_placement(args.local_rank)
    if place is None:
        if args.world_size > 1:
            raise UserError(
                f"--world_size {args.world_size} without a launcher: start the processes with "
                "torchrun or python -m torch.distributed.launch"
            )
        place = Placement(0, 1, max(args.local_rank, 0), 1)
    if cuda and place.local_rank >= torch.cuda.device_count():
        raise UserError(
            f"local rank {place.local_rank} but only {torch.cuda.device_count()} GPU(s) visible: lower --nproc_per_node"
        )
    args.local_rank = place.local_rank
    # SwAV's --dist_url is env:// only: the launcher's environment is the rendezvous.
    return start_process(args, place, place.local_rank if cuda else None, "nccl", "env://", SWAV_FLAGS)


def launch_in_place(worker: Callable[[Any], Any], args: Any) -> Any:
    """init_distributed, `worker(args)`, then leave the group."""
    args = init_distributed(args)
    try:
        return worker(args)
    finally:
        finish_process(args)


def check_rendezvous(url: str, node_rank: int, flag: str = "--dist-url") -> None:
    """Before any process starts: a malformed URL, a host that does not
    resolve, or (on the rank-0 node, which hosts the store) a port already
    in use is one line at once instead of a wait or a long torch error."""
    scheme, host, port = checks.parse_dist_url(url, flag)
    if scheme == "file":
        check_file_store(url, flag)
    if scheme != "tcp":
        return
    address = checks.resolve_host(host, flag)
    if node_rank == 0 and checks.is_local_address(address):
        checks.port_free(port, flag)


def check_file_store(url: str, flag: str = "--dist-url") -> None:
    """A file:// rendezvous needs a folder that exists and can be written
    (torch's FileStore waits for ever on a path it cannot create)."""
    path = urllib.parse.urlparse(url).path
    folder = os.path.dirname(path) or "/"
    if os.path.isdir(path):
        raise UserError(
            f"{flag} '{url}': '{path}' is a folder; give a file in a shared folder, e.g. file://{path}/store"
        )
    if not os.path.isdir(folder):
        raise UserError(
            f"{flag} '{url}': folder '{folder}' does not exist (expected a folder every process can write, "
            "on a disk all nodes share)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} '{url}': folder '{folder}' is not writable")


def _give_up(message: str, stderr_fd: int) -> None:
    """The rendezvous watchdog's end: whatever torch is waiting on (a
    FileStore, a TCPStore connect, a peer), this process stops with one line
    (on the real stderr: fd 2 is muted while torch waits)."""
    os.write(stderr_fd, f"error: {message}\n".encode())
    os._exit(2)


@contextlib.contextmanager
def _quiet_stderr():
    """Swallow what C++ writes to stderr meanwhile: c10d logs every retry of
    a store connect with a stack dump; the exception carries the cause."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def init_group(
    backend: str,
    url: str,
    world_size: int,
    rank: int,
    timeout_s: float,
    flag: str = "--dist-url",
    timeout_flag: str = "--dist-timeout",
) -> None:
    """init_process_group whose rendezvous (the TCPStore connect and the
    wait for every rank) and collectives give up after `timeout_s` seconds,
    with one line saying what to do. A watchdog bounds the rendezvous for
    every init method (torch's own timeout does not cover all of them: a
    file:// store waits for ever), a little after torch's own deadline."""
    late = (
        f"{flag} {url}: not all {world_size} processes joined within {timeout_flag} {timeout_s:g} s "
        f"(rank {rank}); start every process with the same {flag} and world size, or raise {timeout_flag}"
    )
    sys.stderr.flush()
    stderr_fd = os.dup(2)
    watchdog = threading.Timer(timeout_s + min(30.0, 0.5 * timeout_s + 2), _give_up, args=(late, stderr_fd))
    watchdog.daemon = True
    watchdog.start()
    try:
        with _quiet_stderr():
            dist.init_process_group(
                backend=backend,
                init_method=url,
                world_size=world_size,
                rank=rank,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
    except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError, DistNetworkError are RuntimeErrors
        text = one_line(exc)
        if "address already in use" in text.lower() or "eaddrinuse" in text.lower():
            raise UserError(f"{flag} {url}: the port is in use; pick another port") from None
        if "timeout" in text.lower() or "timed out" in text.lower():
            raise UserError(
                f"{flag} {url}: not all {world_size} processes joined within {timeout_flag} "
                f"{timeout_s:g} s (rank {rank}); start every node with the same {flag} and world "
                "size, check the rank-0 host is reachable, or raise " + timeout_flag
            ) from None
        raise UserError(
            f"{flag} {url}: could not join the process group (rank {rank} of {world_size}): {text[:300]}"
        ) from None
    finally:
        watchdog.cancel()
        os.close(stderr_fd)
