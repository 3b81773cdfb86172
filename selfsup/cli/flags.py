"""Flags shared by the MoCo-family scripts, with the original's names and
defaults (see docs/flags.md for ours that the original did not have)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from selfsup.core import checks as check
from selfsup.core.checkpoint import set_unsafe_load
from selfsup.core.errors import UserError
from selfsup.data.augment import CROP_MIN
from selfsup.models import releases
from selfsup.models.backbones import check_image_size, default_image_size


def default_data(script: Optional[str] = None) -> str:
    """Data folder when the positional argument is left out (one of the
    Reproduction.md commands does): $DISCO_DATA, else the built-in dataset
    of the checkout that `script` (default: the running program,
    sys.argv[0]) belongs to. Every script sits one folder below the
    checkout's root (moco/, DisCo/, swav-master/, ...), so that is
    <script's folder>/../data/builtin. The library itself may be installed
    anywhere (a wheel), so it never looks for the checkout beside its own files."""
    script_folder = os.path.dirname(os.path.abspath(script or sys.argv[0]))
    return os.environ.get("DISCO_DATA", os.path.join(os.path.dirname(script_folder), "data", "builtin"))


def common_parser(
    description: str,
    lr: float,
    epochs: int,
    schedule: Sequence[int],
    wd: float,
    workers: int = 32,
    batch_size: int = 256,
) -> argparse.ArgumentParser:
    p = check.FlagParser(description=description)
    p.add_argument(
        "data",
        metavar="DIR",
        nargs="?",
        default=None,
        help="folder with train/ and val/ (default: $DISCO_DATA or data/builtin)",
    )
    p.add_argument("-a", "--arch", metavar="ARCH", default="resnet50", help="backbone (see selfsup.models.backbones)")
    p.add_argument(
        "-j", "--workers", default=workers, type=int, metavar="N", help="data loading workers (capped at the CPU count)"
    )
    p.add_argument("--epochs", default=epochs, type=int, metavar="N")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N")
    p.add_argument(
        "-b",
        "--batch-size",
        default=batch_size,
        type=int,
        metavar="N",
        help="total batch size over the processes of a node",
    )
    p.add_argument("--lr", "--learning-rate", default=lr, type=float, metavar="LR", dest="lr")
    p.add_argument(
        "--schedule",
        default=list(schedule),
        nargs="*",
        type=int,
        help="epochs at which the lr is multiplied by --gamma",
    )
    p.add_argument("--momentum", default=0.9, type=float, metavar="M")
    p.add_argument("--wd", "--weight-decay", default=wd, type=float, metavar="W", dest="weight_decay")
    p.add_argument("-p", "--print-freq", default=10, type=int, metavar="N")
    p.add_argument(
        "--resume",
        default="",
        type=str,
        metavar="PATH",
        help="checkpoint file to resume from (a folder: its newest checkpoint)",
    )
    p.add_argument("--world-size", default=-1, type=int, help="number of nodes")
    p.add_argument("--rank", default=-1, type=int, help="node rank")
    p.add_argument("--dist-url", default="tcp://localhost:10001", type=str)
    p.add_argument("--dist-backend", default="nccl", type=str, help="nccl on GPUs; gloo is used on CPU")
    p.add_argument("--seed", default=None, type=int)
    p.add_argument("--gpu", default=None, type=int, help="GPU id for a single-process run")
    p.add_argument(
        "--multiprocessing-distributed",
        action="store_true",
        help="one process per GPU of the node (per --cpu-procs on a machine without GPUs)",
    )
    # Ours.
    p.add_argument(
        "--cpu-procs",
        default=1,
        type=int,
        help="processes per node with --multiprocessing-distributed when no GPU is visible (gloo)",
    )
    p.add_argument("--image-size", default=224, type=int, help="crop size (32-64 for the built-in data)")
    p.add_argument(
        "--small-images",
        action="store_true",
        default=None,
        help="3x3 stride-1 stem without max-pool, for 32-64 px images",
    )
    p.add_argument("--ckpt-dir", default="./ckpt", help="where checkpoints and metrics.csv go")
    add_dist_timeout_arg(p)
    add_skip_bad_images_arg(p)
    return add_unsafe_load_arg(p)


def add_dist_timeout_arg(p: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    """How long a process waits for its peers (rendezvous and collectives)."""
    p.add_argument(
        *(names or ("--dist-timeout",)),
        default=300.0,
        type=float,
        metavar="SECONDS",
        dest="dist_timeout",
        help="seconds to wait for the other processes or nodes to join (and for each collective) "
        "before stopping with one line (default 300)",
    )
    return p


class _SkipBadImages(argparse.Action):
    """store_true that also sets the data sets' process-wide policy (kept in
    the environment, so spawned processes and loader workers see it too)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[check.SKIP_BAD_IMAGES_ENV] = "1"
        setattr(namespace, self.dest, True)


def add_skip_bad_images_arg(p: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    p.add_argument(
        *(names or ("--skip-bad-images",)),
        action=_SkipBadImages,
        dest="skip_bad_images",
        help="an unreadable image met during training is reported by path and replaced by the next "
        "readable one (the count is printed after each epoch). Default: the run stops with one "
        "line naming the file",
    )
    return p


class _UnsafeLoad(argparse.Action):
    """store_true that also sets the loader's process-wide policy the moment
    the flag is parsed, so no script has to pass it down to each load."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        set_unsafe_load(True)
        setattr(namespace, self.dest, True)


def add_unsafe_load_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--unsafe-load, for every script that reads a checkpoint or data pickle."""
    p.add_argument(
        "--unsafe-load",
        action=_UnsafeLoad,
        help="load checkpoints (and CIFAR pickles) with plain pickle, which can run code hidden "
        "in the file: only for files you trust. Default: tensors and plain values only "
        "(docs/safety.md)",
    )
    return p


def add_speed_args(p: argparse.ArgumentParser, gpu_aug: bool = True) -> argparse.ArgumentParser:
    """--precision, --channels-last and (pretraining) --gpu-aug; see docs/speed.md.
    The defaults are the original's path: fp32, contiguous, PIL workers."""
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32 (default, the paper's numbers); bf16 autocast (fp16 + grad scaler on GPUs "
        "without bf16); fp16 autocast with a grad scaler. Losses and the queue stay fp32",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for model and inputs")
    if gpu_aug:
        p.add_argument(
            "--gpu-aug",
            action="store_true",
            help="workers only read files; JPEG decode (nvjpeg) and the MoCo augmentation run "
            "batched on the training device",
        )
        p.add_argument(
            "--gpu-aug-decode",
            default="gpu",
            choices=["gpu", "workers"],
            help="with --gpu-aug: decode JPEGs on the GPU (gpu), or decode and crop in the workers "
            "and do the rest on the GPU (workers)",
        )
    return p


def add_moco_args(p: argparse.ArgumentParser, moco_t: float = 0.07) -> argparse.ArgumentParser:
    p.add_argument("--moco-dim", default=128, type=int)
    p.add_argument("--moco-k", default=65536, type=int, help="queue size")
    p.add_argument("--moco-m", default=0.999, type=float, help="key encoder momentum")
    p.add_argument("--moco-t", default=moco_t, type=float, help="softmax temperature")
    p.add_argument("--mlp", action="store_true", help="MLP projection head")
    p.add_argument("--aug-plus", action="store_true", help="MoCo-v2 augmentation")
    p.add_argument(
        "--crop-min",
        default=CROP_MIN,
        type=float,
        help="smallest random crop of a view, as a share of the image's area (MoCo's 0.2; 0.8 for images that "
        "differ by less than such crops change them, e.g. the digits: docs/disco.md)",
    )
    p.add_argument("--cos", action="store_true", help="cosine lr schedule")
    p.add_argument("--hidden", default=-1, type=int, help="MLP hidden width: -1 backbone width, 0 none, N width N")
    p.add_argument("--resume-ckpt", action="store_true", help="resume from the newest checkpoint in --ckpt-dir")
    p.add_argument(
        "--bn-splits",
        default=8,
        type=int,
        help="BatchNorm groups when one process holds the whole batch (shuffle-BN stand-in)",
    )
    p.add_argument("--gamma", default=0.1, type=float, help="lr factor at each --schedule milestone")
    return add_speed_args(p)


def finish_common(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and defaults that every script applies after parsing: every
    range here, so that bad input is one line before any work."""
    if args.data is None:
        args.data = default_data()
    if args.batch_size < 1:
        raise UserError(f"-b/--batch-size {args.batch_size}: expected a positive number")
    check.at_least(args.epochs, 1, "--epochs", "a positive number")
    check.at_least(args.start_epoch, 0, "--start-epoch", "0 or more")
    if args.start_epoch >= args.epochs:
        raise UserError(f"--epochs {args.epochs} with --start-epoch {args.start_epoch}: nothing to train")
    check.at_least(args.workers, 0, "-j/--workers", "0 or more")
    check.learning_rate(args.lr, "--lr")
    check.in_unit_interval(args.momentum, "--momentum")
    check.non_negative(args.weight_decay, "--wd/--weight-decay")
    check.at_least(args.print_freq, 1, "-p/--print-freq", "a positive number of batches")
    if any(m < 0 for m in args.schedule):
        raise UserError(f"--schedule {' '.join(map(str, args.schedule))}: expected epochs >= 0")
    if args.image_size is not None:
        check.at_least(args.image_size, 1, "--image-size", "a positive number of pixels")
    check.seed(args.seed)
    if args.gpu is not None:
        check.at_least(args.gpu, 0, "--gpu", "a GPU index >= 0")
    check.at_least(args.cpu_procs, 1, "--cpu-procs", "1 or more")
    if args.cpu_procs > 1 and not args.multiprocessing_distributed:
        raise UserError(
            f"--cpu-procs {args.cpu_procs} needs --multiprocessing-distributed (without it one process runs)"
        )
    if getattr(args, "save_freq", None) is not None:
        check.at_least(args.save_freq, 0, "--save-freq", "0 (checkpoints after each epoch only) or more iterations")
    check_launch(args)
    check.output_dir(args.ckpt_dir, "--ckpt-dir")
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    if args.image_size is None:  # left to the arch (main_moco.py): the original's crop size for it
        args.image_size = default_image_size(args.arch)
    return args


def check_launch(args: argparse.Namespace) -> None:
    """--world-size/--rank/--dist-url/--dist-backend/--dist-timeout; the port
    and the peers are checked when the group is made (selfsup.engine.runtime)."""
    if args.world_size == 0 or args.world_size < -1:
        raise UserError(f"--world-size {args.world_size}: expected the number of nodes (1 or more)")
    if args.rank < -1:
        raise UserError(f"--rank {args.rank}: expected the node's rank (0 or more)")
    if args.world_size > 0 and args.rank >= args.world_size:
        raise UserError(
            f"--rank {args.rank} with --world-size {args.world_size}: expected a rank below {args.world_size}"
        )
    if args.dist_backend not in ("nccl", "gloo", "mpi", "ucc"):
        raise UserError(f"--dist-backend {args.dist_backend}: expected nccl or gloo")
    check.positive(args.dist_timeout, "--dist-timeout", "a positive number of seconds")
    scheme, _, _ = check.parse_dist_url(args.dist_url)
    if scheme != "env":  # env:// (a launcher) gives the rank and world size the flags leave out
        check_rank_pair(args)


def check_rank_pair(args: argparse.Namespace) -> None:
    """--rank and --world-size go together, in each launch style: a node
    rank without the node count would place a single process at rank N of 1
    (and resume from RNG states it does not have), a node count without the
    rank would start every node as node 0."""
    if args.rank > 0 and args.world_size == -1:
        raise UserError(
            f"--rank {args.rank} without --world-size: give --world-size, the number of nodes "
            "(--rank is this node's index below it)"
        )
    if args.world_size > 1 and args.rank < 0:
        raise UserError(f"--world-size {args.world_size} nodes: give each node its --rank (0 to {args.world_size - 1})")


def finish_moco(args: argparse.Namespace, default_hidden: int = -1) -> argparse.Namespace:
    finish_common(args)
    check.at_least(args.moco_dim, 1, "--moco-dim", "a positive embedding width")
    check.at_least(args.moco_k, 1, "--moco-k", "a positive queue size")
    check.in_unit_interval(args.moco_m, "--moco-m")
    if not 0 < args.crop_min <= 1:
        raise UserError(f"--crop-min {args.crop_min}: expected a share of the image's area in (0, 1]")
    check.positive(args.moco_t, "--moco-t", "a temperature > 0")
    check.at_least(args.bn_splits, 1, "--bn-splits", "1 or more BatchNorm groups")
    check.non_negative(args.gamma, "--gamma")
    check.at_least(args.hidden, -1, "--hidden", "-1 (feature width), 0 (no hidden layer) or a positive width")
    if args.hidden != default_hidden and not args.mlp:
        raise UserError(f"--hidden {args.hidden} sets the MLP's hidden width: it needs --mlp")
    if args.resume and args.resume_ckpt:
        raise UserError("--resume PATH and --resume-ckpt both given: choose one")
    if args.moco_k < args.batch_size:
        raise UserError(
            f"--moco-k {args.moco_k} is smaller than -b/--batch-size {args.batch_size}: "
            "the queue must hold at least one batch of keys"
        )
    nodes = max(args.world_size, 1)
    if args.moco_k < args.batch_size * nodes:  # each step enqueues the keys of every node
        raise UserError(
            f"--moco-k {args.moco_k} is smaller than the {args.batch_size * nodes} keys of one step "
            f"(-b/--batch-size {args.batch_size} on each of --world-size {nodes} nodes): "
            "the queue must hold at least one step's keys"
        )
    if getattr(args, "gpu_aug_decode", "gpu") != "gpu" and not getattr(args, "gpu_aug", False):
        raise UserError(f"--gpu-aug-decode {args.gpu_aug_decode} sets how --gpu-aug decodes: it needs --gpu-aug")
    check_image_size(args.arch, args.image_size, bool(args.small_images))
    return args


def lincls_parser(
    description: str,
    lr: float = 30.0,
    epochs: int = 100,
    schedule: Sequence[int] = (60, 80),
    gamma: float | Callable[[Sequence[int]], float] = 0.1,
    wd: float = 0.0,
) -> argparse.ArgumentParser:
    """Linear-evaluation flags: the common ones plus --pretrained/-e/--gamma.
    `gamma` is a number or a rule schedule -> factor (the original's factor can
    depend on the milestones given); an explicit --gamma overrides either."""
    p = common_parser(description, lr=lr, epochs=epochs, schedule=schedule, wd=wd)
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate --resume/--pretrained on val only")
    p.add_argument("--pretrained", default="", type=str, metavar="PATH", help="pretraining checkpoint")
    rule = gamma.__doc__.splitlines()[0].rstrip(".") if callable(gamma) else gamma
    p.add_argument(
        "--gamma", default=None, type=float, help=f"lr factor at each --schedule milestone (default: {rule})"
    )
    p.add_argument("--cos", action="store_true", help="cosine lr schedule instead of --schedule (ours)")
    p.set_defaults(ckpt_dir="./ckpt_lincls", gamma_default=gamma)
    p._option_string_actions["--resume"].help = (
        "linear-eval checkpoint to resume from: a file, or a folder "
        "holding checkpoint.pth.tar; default: --ckpt-dir's "
        "checkpoint.pth.tar, so a rerun resumes; '' starts from scratch"
    )
    p.set_defaults(resume=None)
    add_save_freq_arg(p)
    return add_speed_args(p, gpu_aug=False)


def finish_lincls(args: argparse.Namespace) -> argparse.Namespace:
    finish_common(args)
    rule = vars(args).pop("gamma_default", 0.1)
    if args.gamma is None:
        args.gamma = rule(args.schedule) if callable(rule) else rule
    check.non_negative(args.gamma, "--gamma")
    if args.resume and os.path.isdir(args.resume):
        # The original takes a folder and reads checkpoint.pth.tar in it; without
        # one it prints this line and trains from scratch
        # (orig:DisCo/main_lincls.py:252-274, 541-547). A missing path stays an error.
        found = os.path.join(args.resume, "checkpoint.pth.tar")
        if not os.path.isfile(found):
            print(f"=> no checkpoint found at '{args.resume}'", flush=True)
        args.resume = found if os.path.isfile(found) else ""
    if args.evaluate and not (args.resume or args.pretrained):
        raise UserError("-e/--evaluate needs a model: give --resume (a linear-eval checkpoint) or --pretrained")
    check_image_size(args.arch, args.image_size, args.small_images)  # None: either stem (the checkpoint's)
    return args


class _StoreGivenDim(argparse._StoreAction):
    """--moco-dim that remembers it was given, so a distillation run can size
    a default width to its teacher's embedding (selfsup.methods.disco._teacher_for)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.moco_dim_given = True


def add_teacher_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """DisCo/RKD flags; --hidden defaults to 2048, the width the original
    hard-coded for every student's MLP. --moco-dim, when not given, follows
    the teacher's embedding width (128 for MoCo-v2/SwAV teachers, as before)."""
    p.add_argument(
        "--teacher_arch",
        default="resnet50",
        help="resnet50/101/152 (MoCo-v2 checkpoints), SWAVresnet50, resnet50w2 (SwAV), DCresnet50 "
        "(DeepCluster-v2), SELAresnet50 (SeLa-v2), any -a arch (a MoCo-v2 checkpoint of it), "
        "or a release: dino_vits16, dino_vits8, dino_xcit_small_12_p16, dino_resnet50, "
        "mocov3_vit_small, mocov3_resnet50, dinov2_vits14, dinov2_vits14_reg (docs/teachers.md)",
    )
    p.add_argument(
        "--teacher",
        default="",
        type=str,
        metavar="PATH",
        help="teacher checkpoint or release file (read safely, never downloaded)",
    )
    dim = p._option_string_actions.get("--moco-dim")
    if dim is not None:
        dim.__class__ = _StoreGivenDim
        dim.help = "embedding width (default: the teacher's, 128 for MoCo-v2 and SwAV teachers)"
        p.set_defaults(moco_dim_given=False)
    p.add_argument("--nmb_prototypes", default=0, type=int, help="prototypes of a SwAV teacher (0: none)")
    p.add_argument(
        "--teacher-bn",
        default="train",
        choices=["train", "eval"],
        help="teacher BatchNorm: train (batch statistics, the original's; running averages are "
        "not updated) or eval (running statistics, a fixed teacher)",
    )
    p.add_argument(
        "--mse-reduction",
        default="sum",
        choices=["sum", "mean"],
        help="reduction of the MSE term (the original sums per GPU; one process "
        "divides its sum by its --bn-splits groups)",
    )
    p.set_defaults(hidden=2048)
    return p


def finish_distill(args: argparse.Namespace) -> argparse.Namespace:
    finish_moco(args, default_hidden=2048)
    check.non_negative(args.nmb_prototypes, "--nmb_prototypes", "0 (none) or more prototypes")
    for flag in ("rkd_dist_weight", "rkd_angle_weight"):  # main_moco_distill_rkd.py's
        if hasattr(args, flag):
            check.non_negative(getattr(args, flag), "--" + flag.replace("_", "-"))
    if not args.teacher:
        raise UserError("--teacher PATH is required (a MoCo-v2 or SwAV checkpoint of --teacher_arch)")
    if releases.is_release(args.teacher_arch):  # the others' stem comes from their checkpoint
        releases.check_image_size(args.teacher_arch, args.image_size)
    return args


def add_save_freq_arg(p: argparse.ArgumentParser, name: str = "--save-freq") -> argparse.ArgumentParser:
    """--save-freq N: mid-epoch checkpoints every N iterations (docs/resume.md)."""
    p.add_argument(
        name,
        default=0,
        type=int,
        metavar="N",
        dest="save_freq",
        help="also write a checkpoint every N iterations within an epoch, from which a rerun "
        "continues exactly (0: only after each epoch; SIGTERM/SIGUSR1 always write one)",
    )
    return p


def resume_from_ckpt_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--resume defaults to --ckpt-dir, so rerunning a command resumes it
    (the original's main_moco.py default made general); '' starts fresh."""
    p.set_defaults(resume=None)
    p._option_string_actions["--resume"].help = (
        "checkpoint file, or folder (its newest checkpoint_NNNN.pth.tar), to resume from; "
        "default: --ckpt-dir, so a rerun resumes; '' starts from scratch"
    )
    return p


def main_moco_defaults(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """moco/main_moco.py's own defaults. --resume: the original's is ./ckpt,
    the folder its checkpoints go to, so rerunning a command resumes it; ours
    is --ckpt-dir (./ckpt unless given), and --resume '' starts fresh.
    --image-size: the original crops efficientb5 at 456 px, the rest at 224."""
    p.set_defaults(image_size=None)
    p._option_string_actions[
        "--image-size"
    ].help = "crop size (default: the original's for -a: 456 for efficientb5, else 224)"
    return resume_from_ckpt_dir(p)
