"""Start one process per GPU (or per --cpu-procs on CPU), or join the group
that torchrun / torch.distributed.launch made, then call the worker.

Three ways in, one worker signature ``worker(args)``, where args carries
``rank``, ``world_size``, ``gpu``, ``device`` and ``distributed``:
- torchrun / ``python -m torch.distributed.launch``: env:// from RANK,
  WORLD_SIZE and LOCAL_RANK;
- ``--multiprocessing-distributed``: spawns the processes itself (NCCL on
  GPUs, gloo on CPU); one process in all runs in place, without a group;
- neither: one process on ``--gpu`` (or the first GPU, or the CPU).
"""
import contextlib
import copy
import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.core import checks
from selfsup.core.errors import UserError, exit_with, one_line


def launched_by_torchrun():
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch(worker, args):
    if launched_by_torchrun():
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.dist_url = "env://"
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
        return _run(int(os.environ["LOCAL_RANK"]), per_node, worker, args, rank=int(os.environ["RANK"]))
    n_gpus = torch.cuda.device_count()
    if args.multiprocessing_distributed:
        if n_gpus == 0 and args.cpu_procs < 1:
            raise UserError(f"--cpu-procs {args.cpu_procs}: expected at least 1")
        per_node = n_gpus or args.cpu_procs
        nodes = max(args.world_size, 1)
        args.world_size = per_node * nodes
        if args.world_size == 1:
            return _run(0, 1, worker, args, rank=0)
        check_rendezvous(args.dist_url, max(args.rank, 0))
        try:
            mp.spawn(_spawned, nprocs=per_node, args=(per_node, worker, args))
        except mp.ProcessExitedException as exc:  # the child already printed its error
            sys.exit(exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1)
        return None
    args.world_size = max(args.world_size, 1)
    return _run(0, 1, worker, args, rank=max(args.rank, 0), single=True)


def _spawned(local_rank, per_node, worker, args):
    error = None
    try:
        _run(local_rank, per_node, worker, args, rank=max(args.rank, 0) * per_node + local_rank)
    except UserError as exc:
        error = exc
    if error is not None:
        exit_with(error)


def _run(local_rank, per_node, worker, args, rank, single=False):
    args = copy.copy(args)
    cuda = torch.cuda.is_available()
    if args.gpu is not None and not cuda:
        raise UserError(f"--gpu {args.gpu} given, but no CUDA GPU is visible")
    if cuda:
        args.gpu = (args.gpu if args.gpu is not None else 0) if single else local_rank
        torch.cuda.set_device(args.gpu)
        args.device = torch.device("cuda", args.gpu)
    else:
        args.device = torch.device("cpu")
        # Denormal floats make CPU kernels many times slower and do not change results here.
        torch.set_flush_denormal(True)
        if per_node > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    args.rank = rank
    args.distributed = args.world_size > 1
    if args.distributed:
        backend = args.dist_backend if cuda else "gloo"
        init_group(backend, args.dist_url, args.world_size, rank, getattr(args, "dist_timeout", 300.0))
    args.batch_size = args.batch_size // per_node
    if args.batch_size < 1:
        raise UserError(f"-b/--batch-size is smaller than the {per_node} processes per node")
    args.workers = (args.workers + per_node - 1) // per_node
    try:
        return worker(args)
    finally:
        if args.distributed and dist.is_initialized():
            dist.destroy_process_group()


def check_rendezvous(url, node_rank, flag="--dist-url"):
    """Before any process starts: a malformed URL, a host that does not
    resolve, or (on the rank-0 node, which hosts the store) a port already
    in use is one line at once instead of a wait or a long torch error."""
    scheme, host, port = checks.parse_dist_url(url, flag)
    if scheme != "tcp":
        return
    address = checks.resolve_host(host, flag)
    if node_rank == 0 and checks.is_local_address(address):
        checks.port_free(port, flag)


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


def init_group(backend, url, world_size, rank, timeout_s, flag="--dist-url", timeout_flag="--dist-timeout"):
    """init_process_group whose rendezvous (the TCPStore connect and the
    wait for every rank) and collectives give up after `timeout_s` seconds,
    with one line saying what to do."""
    try:
        with _quiet_stderr():
            dist.init_process_group(backend=backend, init_method=url, world_size=world_size, rank=rank,
                                    timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, OSError) as exc:  # DistStoreError, DistNetworkError are RuntimeErrors
        text = one_line(exc)
        if "address already in use" in text.lower() or "eaddrinuse" in text.lower():
            raise UserError(f"{flag} {url}: the port is in use; pick another port") from None
        if "timeout" in text.lower() or "timed out" in text.lower():
            raise UserError(f"{flag} {url}: not all {world_size} processes joined within {timeout_flag} "
                            f"{timeout_s:g} s (rank {rank}); start every node with the same {flag} and world "
                            "size, check the rank-0 host is reachable, or raise " + timeout_flag) from None
        raise UserError(f"{flag} {url}: could not join the process group (rank {rank} of {world_size}): "
                        f"{text[:300]}") from None
