"""Process setup and flag helpers for the SwAV scripts (swav-master/).

SwAV's scripts are started by ``python -m torch.distributed.launch``
(``--local_rank N`` on old torch, ``--local-rank=N`` and $LOCAL_RANK on
current torch) or ``torchrun``: env:// from RANK/WORLD_SIZE/MASTER_ADDR.
Without a launcher they run as one process (world size 1) on the first GPU,
or on the CPU. Several CPU processes talk over gloo."""
import argparse
import os

import torch
import torch.distributed as dist

from selfsup.core import checks as check
from selfsup.cli.flags import add_dist_timeout_arg, add_skip_bad_images_arg, add_unsafe_load_arg
from selfsup.core.errors import UserError


def bool_flag(s):
    """SwAV's boolean flags: true/false, on/off, 1/0."""
    v = str(s).lower()
    if v in ("true", "on", "1", "yes"):
        return True
    if v in ("false", "off", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean '{s}' (expected true or false)")


def add_dist_args(p):
    p.add_argument("--local_rank", "--local-rank", default=0, type=int, dest="local_rank",
                   help="set by torch.distributed.launch; $LOCAL_RANK wins when set")
    p.add_argument("--dist_url", default="env://", type=str,
                   help="only env:// (set by the launcher); no launcher: one process")
    p.add_argument("--world_size", default=-1, type=int, help="set by the launcher ($WORLD_SIZE)")
    p.add_argument("--rank", default=0, type=int, help="set by the launcher ($RANK)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="ours: auto = GPU when one is visible, else CPU (gloo between processes)")
    add_dist_timeout_arg(p, "--dist_timeout", "--dist-timeout")
    add_skip_bad_images_arg(p, "--skip_bad_images", "--skip-bad-images")
    return add_unsafe_load_arg(p)  # every SwAV script reads a checkpoint


# (flag, check) of the SwAV scripts' numbers; a flag a script lacks is skipped.
_RANGES = [
    ("epochs", lambda v, f: check.at_least(v, 1, f, "a positive number")),
    ("batch_size", lambda v, f: check.at_least(v, 1, f, "a positive number")),
    ("workers", lambda v, f: check.at_least(v, 0, f, "0 or more")),
    ("print_freq", lambda v, f: check.at_least(v, 1, f, "a positive number of iterations")),
    ("checkpoint_freq", lambda v, f: check.at_least(v, 1, f, "a positive number of epochs")),
    ("base_lr", check.learning_rate), ("lr", check.learning_rate), ("final_lr", check.non_negative),
    ("start_warmup", check.non_negative), ("wd", check.non_negative), ("gamma", check.non_negative),
    ("mse_weight", check.non_negative),
    ("temperature", lambda v, f: check.positive(v, f, "a temperature > 0")),
    ("epsilon", lambda v, f: check.positive(v, f, "a number > 0")),
    ("sinkhorn_iterations", lambda v, f: check.at_least(v, 1, f, "1 or more")),
    ("queue_length", lambda v, f: check.at_least(v, 0, f, "0 (no queue) or more")),
    ("epoch_queue_starts", lambda v, f: check.at_least(v, 0, f, "0 or more")),
    ("freeze_prototypes_niters", lambda v, f: check.at_least(v, 0, f, "0 or more")),
    ("warmup_epochs", lambda v, f: check.at_least(v, 0, f, "0 or more")),
    ("hidden_mlp", lambda v, f: check.at_least(v, 0, f, "0 (linear head) or a positive width")),
    ("image_size", lambda v, f: check.at_least(v, 1, f, "a positive number of pixels")),
    ("dist_timeout", lambda v, f: check.positive(v, f, "a positive number of seconds")),
    ("seed", lambda v, f: check.seed(v, f)),
]


def check_args(args):
    """Every range of a SwAV script's flags, the launch settings and
    --dump_path, before any work: one line naming the flag."""
    for name, fn in _RANGES:
        if getattr(args, name, None) is not None:
            fn(getattr(args, name), "--" + name)
    if any(e < 0 for e in getattr(args, "decay_epochs", [])):
        raise UserError(f"--decay_epochs {' '.join(map(str, args.decay_epochs))}: expected epochs >= 0")
    if args.world_size == 0 or args.world_size < -1:
        raise UserError(f"--world_size {args.world_size}: expected the number of processes (1 or more)")
    check.parse_dist_url(args.dist_url, "--dist_url")
    check.output_dir(args.dump_path, "--dump_path")
    return args


def launched():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(args):
    """Fill args.rank, world_size, local_rank, device, distributed; join the group."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda given, but no CUDA GPU is visible")
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if launched():
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank))
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    else:
        if args.world_size > 1:
            raise UserError(f"--world_size {args.world_size} without a launcher: start the processes with "
                            "torchrun or python -m torch.distributed.launch")
        args.rank, args.world_size, per_node = 0, 1, 1
    if cuda:
        n = torch.cuda.device_count()
        gpu = args.local_rank if launched() else max(args.local_rank, 0)
        if gpu >= n:
            raise UserError(f"local rank {gpu} but only {n} GPU(s) visible: lower --nproc_per_node")
        torch.cuda.set_device(gpu)
        args.gpu, args.device = gpu, torch.device("cuda", gpu)
    else:
        args.gpu, args.device = None, torch.device("cpu")
        # Near-uniform SwAV predictions make tiny gradients; denormal floats
        # then slow CPU kernels down ~10x. Flushing them to zero costs nothing.
        torch.set_flush_denormal(True)
        if per_node > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    args.distributed = args.world_size > 1
    if args.distributed:
        from selfsup.engine.runtime import init_group
        init_group("nccl" if cuda else "gloo", "env://", args.world_size, args.rank,
                   getattr(args, "dist_timeout", 300.0), flag="--dist_url", timeout_flag="--dist_timeout")
    return args


def finish_distributed(args):
    if getattr(args, "distributed", False) and dist.is_initialized():
        dist.destroy_process_group()


def autocast_dtype(args):
    """Mixed-precision dtype of --use_fp16 true (None: fp32).

    --amp_dtype auto: bfloat16 on GPUs that support it, else float16 (with a
    gradient scaler); on the CPU, auto means fp32 (CPU autocast is slower
    than fp32 here). bfloat16/float16 force the choice, also on the CPU."""
    if not args.use_fp16:
        return None
    if args.amp_dtype == "auto":
        if args.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if args.amp_dtype == "bfloat16" and args.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[args.amp_dtype]
