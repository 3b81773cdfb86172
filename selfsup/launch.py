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
import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .errors import UserError, one_line


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
        try:
            mp.spawn(_spawned, nprocs=per_node, args=(per_node, worker, args))
        except mp.ProcessExitedException as exc:  # the child already printed its error
            sys.exit(exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1)
        return None
    args.world_size = max(args.world_size, 1)
    return _run(0, 1, worker, args, rank=max(args.rank, 0), single=True)


def _spawned(local_rank, per_node, worker, args):
    try:
        _run(local_rank, per_node, worker, args, rank=max(args.rank, 0) * per_node + local_rank)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)


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
        dist.init_process_group(backend=backend, init_method=args.dist_url,
                                world_size=args.world_size, rank=rank)
    args.batch_size = args.batch_size // per_node
    if args.batch_size < 1:
        raise UserError(f"-b/--batch-size is smaller than the {per_node} processes per node")
    args.workers = (args.workers + per_node - 1) // per_node
    try:
        return worker(args)
    finally:
        if args.distributed and dist.is_initialized():
            dist.destroy_process_group()
