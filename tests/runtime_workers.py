"""Workers of tests/test_runtime.py, in a module of their own so that the
processes it starts import little more than torch and the runtime."""

import importlib.util
import json
import os

import torch
import torch.distributed as dist

from selfsup.engine.runtime import launch_in_place

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_swav():
    spec = importlib.util.spec_from_file_location(
        "runtime_main_swav", os.path.join(REPO, "swav-master", "main_swav.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def swav_args(folder, *extra):
    return main_swav().parse_args(["--data_path", str(folder), "--dump_path", str(folder), "--device", "cpu", *extra])


def report(args):
    """What the runtime set up, plus the sum of every rank's rank over the
    group (1 for two processes), also written to <folder>/rank<N>.json."""
    total = torch.tensor([float(args.rank)])
    if args.distributed:
        dist.all_reduce(total)
    seen = {
        "rank": args.rank,
        "world_size": args.world_size,
        "device": str(args.device),
        "gpu": args.gpu,
        "distributed": args.distributed,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "sum_of_ranks": total.item(),
        "group": dist.is_initialized() and dist.get_world_size(),
    }
    folder = getattr(args, "dump_path", None) or args.ckpt_dir
    with open(os.path.join(folder, f"rank{args.rank}.json"), "w") as f:
        json.dump(seen, f)
    return seen


def swav_rank(local_rank, port, args):
    """A process as torchrun starts it: the launcher's variables, then the SwAV
    scripts' launch with `args` (parsed by main_swav.py in the parent)."""
    os.environ.update(
        {
            "RANK": str(local_rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    launch_in_place(report, args)
