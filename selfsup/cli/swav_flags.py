"""Flag groups and checks of the SwAV scripts (swav-master/): the original's
names and defaults (``--dump_path``, ``--base_lr``, ...), plus ours.

Each script builds its own parser from these groups and adds the flags only
it has; see swav-master/main_swav.py, main_swav_distill.py, eval_linear.py."""

import argparse
import os

from selfsup.cli.flags import (
    add_dist_timeout_arg,
    add_skip_bad_images_arg,
    add_unsafe_load_arg,
)
from selfsup.core import checks as check
from selfsup.core.errors import UserError
from selfsup.data.multicrop import check_multicrop_args
from selfsup.models.backbones import backbone_spec, check_image_size


def parser(description: str) -> argparse.ArgumentParser:
    """The SwAV scripts' parser: inf/nan floats and argparse's own errors are one line (checks.FlagParser)."""
    return check.FlagParser(description=description)


def bool_flag(s: str) -> bool:
    """SwAV's boolean flags: true/false, on/off, 1/0."""
    v = str(s).lower()
    if v in ("true", "on", "1", "yes"):
        return True
    if v in ("false", "off", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean '{s}' (expected true or false)")


def add_dist_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The launch flags (selfsup.engine.runtime.init_distributed reads them)."""
    p.add_argument(
        "--local_rank",
        "--local-rank",
        default=0,
        type=int,
        dest="local_rank",
        help="set by torch.distributed.launch; $LOCAL_RANK wins when set",
    )
    p.add_argument(
        "--dist_url", default="env://", type=str, help="only env:// (set by the launcher); no launcher: one process"
    )
    p.add_argument("--world_size", default=-1, type=int, help="set by the launcher ($WORLD_SIZE)")
    p.add_argument("--rank", default=0, type=int, help="set by the launcher ($RANK)")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="ours: auto = GPU when one is visible, else CPU (gloo between processes)",
    )
    add_dist_timeout_arg(p, "--dist_timeout", "--dist-timeout")
    add_skip_bad_images_arg(p, "--skip_bad_images", "--skip-bad-images")
    return add_unsafe_load_arg(p)  # every SwAV script reads a checkpoint


# -- main_swav.py and main_swav_distill.py -------------------------------------------


def add_swav_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Data, multi-crop, and SwAV's own: codes, prototypes, queue."""
    a = p.add_argument
    a("--data_path", type=str, default="/path/to/imagenet", help="ImageFolder of training images (class sub-folders)")
    a("--nmb_crops", type=int, default=[2], nargs="+", help="number of crops of each resolution")
    a("--size_crops", type=int, default=[224], nargs="+", help="crop size of each resolution")
    a("--min_scale_crops", type=float, default=[0.14], nargs="+", help="RandomResizedCrop scale minimum")
    a("--max_scale_crops", type=float, default=[1], nargs="+", help="RandomResizedCrop scale maximum")
    a("--crops_for_assign", type=int, nargs="+", default=[0, 1], help="crops whose codes are predicted")
    a("--temperature", default=0.1, type=float)
    a("--epsilon", default=0.05, type=float, help="Sinkhorn regularisation")
    a("--sinkhorn_iterations", default=3, type=int)
    a("--feat_dim", default=128, type=int, help="embedding width")
    a("--nmb_prototypes", default=3000, type=int)
    a("--queue_length", type=int, default=0, help="length of the feature queue (0: none)")
    a("--epoch_queue_starts", type=int, default=15, help="epoch from which the queue is used")
    return p


def add_swav_optim_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Epochs, batch, LARS-wrapped SGD and its warmup + cosine schedule."""
    a = p.add_argument
    a("--epochs", default=100, type=int)
    a("--batch_size", default=64, type=int, help="images per process")
    a("--base_lr", default=4.8, type=float)
    a("--final_lr", type=float, default=0)
    a("--freeze_prototypes_niters", default=313, type=int, help="iterations with frozen prototypes")
    a("--wd", default=1e-6, type=float)
    a("--warmup_epochs", default=10, type=int)
    a("--start_warmup", default=0, type=float)
    return p


def add_swav_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Model, loader, precision, sync BN, files, restart and seed."""
    a = p.add_argument
    a("--arch", default="resnet50", type=str)
    a("--hidden_mlp", default=2048, type=int, help="projection head hidden width (0: linear head)")
    a("--workers", default=10, type=int)
    a("--checkpoint_freq", type=int, default=25, help="keep checkpoints/ckp-{epoch}.pth every N epochs")
    a("--use_fp16", type=bool_flag, default=True, help="mixed precision (torch autocast; see --amp_dtype)")
    a("--sync_bn", type=str, default="pytorch", help="pytorch: SyncBatchNorm across GPUs; apex: same as pytorch")
    a("--syncbn_process_group_size", type=int, default=8, help="accepted; SyncBatchNorm spans all ranks here")
    a("--dump_path", type=str, default=".", help="checkpoints, queue, metrics.csv")
    a(
        "--restart",
        type=bool_flag,
        default=True,
        help="ours: continue the run in --dump_path (default, as the original); false starts from scratch "
        "and moves that run's files to --dump_path/previous-N",
    )
    a(
        "--save_freq",
        type=int,
        default=0,
        help="ours: also checkpoint every N iterations within an epoch (docs/resume.md)",
    )
    a("--seed", type=int, default=31)
    return p


def add_swav_ours_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Ours: small-image stem, autocast dtype, progress lines, memory format, --precision."""
    a = p.add_argument
    a("--small_images", type=bool_flag, default=False, help="ours: 3x3 stride-1 stem for 16-64 px crops")
    a(
        "--amp_dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16"],
        help="ours: autocast dtype of --use_fp16 true (auto: bf16 where the GPU has it, fp16 otherwise, fp32 on CPU)",
    )
    a("--print_freq", type=int, default=50, help="ours: iterations between progress lines")
    # false, as the MoCo scripts' --channels-last and the original (contiguous tensors): a memory layout only.
    a(
        "--channels_last",
        type=bool_flag,
        default=False,
        help="ours: channels-last memory format for the model and the crops (as the MoCo scripts' --channels-last)",
    )
    a(
        "--precision",
        default=None,
        choices=["fp32", "bf16", "fp16"],
        help="ours, the MoCo scripts' flag: fp32 = --use_fp16 false; bf16/fp16 = --use_fp16 true with "
        "--amp_dtype bfloat16/float16 (bf16 falls back to fp16 on GPUs without it)",
    )
    return p


def finish_swav_args(args: argparse.Namespace, distill: bool = False) -> argparse.Namespace:
    """Checks and derived values of main_swav.py (and, distill, main_swav_distill.py)."""
    if getattr(args, "precision", None):
        args.use_fp16 = args.precision != "fp32"
        if args.use_fp16:
            args.amp_dtype = {"bf16": "bfloat16", "fp16": "float16"}[args.precision]
    check_multicrop_args(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops)
    n = sum(args.nmb_crops)
    if not args.crops_for_assign or any(not 0 <= c < n for c in args.crops_for_assign):
        raise UserError(f"--crops_for_assign {args.crops_for_assign}: expected crop indices below {n}")
    if len(set(args.crops_for_assign)) != len(args.crops_for_assign):
        raise UserError(f"--crops_for_assign {args.crops_for_assign}: expected each crop once")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive number")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: nothing to train")
    check.at_least(args.nmb_prototypes, 1, "--nmb_prototypes", "a positive number of prototypes")
    check.at_least(args.feat_dim, 1, "--feat_dim", "a positive embedding width")
    if args.sync_bn not in ("pytorch", "apex", "none"):
        raise UserError(f"--sync_bn {args.sync_bn}: expected pytorch, apex or none")
    check_args(args)
    if 0 < args.queue_length < args.batch_size:  # the original rounds it down to a multiple of the step's features
        raise UserError(
            f"--queue_length {args.queue_length} is shorter than one step's {args.batch_size} features "
            "(--batch_size, per process): it would be cut to 0, no queue; give 0 or a multiple of "
            "--batch_size x the processes"
        )
    for size in dict.fromkeys(args.size_crops):
        check_image_size(args.arch, size, args.small_images, "--arch", "--size_crops")
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    if distill:
        if args.pretrained and args.teacher and args.pretrained != args.teacher:
            raise UserError("--pretrained and --teacher name different teachers: give one")
        args.teacher = args.teacher or args.pretrained
        if not args.teacher:
            raise UserError("main_swav_distill.py needs the teacher checkpoint: --pretrained PATH (or --teacher)")
    return args


# -- eval_linear.py ----------------------------------------------------------------


def finish_eval_linear_args(args: argparse.Namespace) -> argparse.Namespace:
    if not args.global_pooling:
        if backbone_spec(args.arch).family != "resnet":
            raise UserError(
                f"--global_pooling false pools a ResNet's final feature map (the original: resnet50 "
                f"only); --arch {args.arch} needs --global_pooling true"
            )
        if args.pooled_bn:
            raise UserError("--pooled_bn true needs --global_pooling true (use --use_bn without global pooling)")
    check_args(args)
    if args.image_size is not None:
        check_image_size(args.arch, args.image_size, args.small_images, "--arch", "--image_size")
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    return args


# -- every SwAV script ---------------------------------------------------------------

# (flag, check) of the SwAV scripts' numbers; a flag a script lacks is skipped.
_RANGES = [
    ("epochs", lambda v, f: check.at_least(v, 1, f, "a positive number")),
    ("batch_size", lambda v, f: check.at_least(v, 1, f, "a positive number")),
    ("workers", lambda v, f: check.at_least(v, 0, f, "0 or more")),
    ("print_freq", lambda v, f: check.at_least(v, 1, f, "a positive number of iterations")),
    ("checkpoint_freq", lambda v, f: check.at_least(v, 1, f, "a positive number of epochs")),
    ("save_freq", lambda v, f: check.at_least(v, 0, f, "0 (checkpoints after each epoch only) or more iterations")),
    ("syncbn_process_group_size", lambda v, f: check.at_least(v, 1, f, "1 or more processes")),
    ("teacher_hidden_mlp", lambda v, f: check.at_least(v, 0, f, "0 (linear head) or a positive width")),
    ("local_rank", lambda v, f: check.at_least(v, 0, f, "the process's index on its node (0 or more)")),
    ("base_lr", check.learning_rate),
    ("lr", check.learning_rate),
    ("final_lr", check.non_negative),
    ("start_warmup", check.non_negative),
    ("wd", check.non_negative),
    ("gamma", check.non_negative),
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


def check_rank(args: argparse.Namespace) -> None:
    """--rank against --world_size (a launcher sets both in the environment,
    which wins over the flags; these are the flags as given)."""
    if args.rank < 0:
        raise UserError(f"--rank {args.rank}: expected the process's rank (0 or more)")
    if args.world_size > 0 and args.rank >= args.world_size:
        raise UserError(
            f"--rank {args.rank} with --world_size {args.world_size}: expected a rank below {args.world_size}"
        )
    if args.rank > 0 and args.world_size == -1:
        raise UserError(
            f"--rank {args.rank} without --world_size: give --world_size, the number of processes "
            "(or start the processes with torchrun, which sets both)"
        )


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every range of a SwAV script's flags, the launch settings and
    --dump_path, before any work: one line naming the flag."""
    for name, fn in _RANGES:
        if getattr(args, name, None) is not None:
            fn(getattr(args, name), "--" + name)
    if any(e < 0 for e in getattr(args, "decay_epochs", [])):
        raise UserError(f"--decay_epochs {' '.join(map(str, args.decay_epochs))}: expected epochs >= 0")
    if args.world_size == 0 or args.world_size < -1:
        raise UserError(f"--world_size {args.world_size}: expected the number of processes (1 or more)")
    check_rank(args)
    check.parse_dist_url(args.dist_url, "--dist_url")
    check.output_dir(args.dump_path, "--dump_path")
    return args
