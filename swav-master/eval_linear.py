#!/usr/bin/env python3
"""Linear evaluation of a SwAV or SwAV+DisCo checkpoint (Tab5).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly (one process; GPU or CPU). Flags and files: docs/swav.md."""

import argparse

from selfsup.cli import swav_flags
from selfsup.cli.swav_flags import bool_flag
from selfsup.core.errors import cli_main
from selfsup.engine.runtime import launch_in_place
from selfsup.engine.swav_eval import run_eval_linear


def build_parser() -> argparse.ArgumentParser:
    p = swav_flags.parser("Linear evaluation of a SwAV / SwAV+DisCo backbone")
    a = p.add_argument
    a("--data_path", type=str, default="/path/to/imagenet", help="folder holding train/ and val/")
    a("--arch", default="resnet50", type=str)
    a("--pretrained", default="", type=str, help="SwAV checkpoint (ours or the official release)")
    a("--global_pooling", default=True, type=bool_flag, help="global average pooling of the last feature map")
    a(
        "--use_bn",
        default=False,
        type=bool_flag,
        help="BatchNorm2d on the pooled map before the linear layer; as in the original, only with "
        "--global_pooling false (see --pooled_bn)",
    )
    a("--epochs", default=100, type=int)
    a("--batch_size", default=32, type=int, help="images per process")
    a("--lr", default=0.3, type=float)
    a("--wd", default=1e-6, type=float)
    a("--nesterov", default=False, type=bool_flag)
    a("--scheduler_type", default="cosine", choices=["step", "cosine"])
    a("--decay_epochs", type=int, nargs="+", default=[60, 80], help="step schedule milestones")
    a("--gamma", type=float, default=0.1, help="step schedule factor")
    a("--final_lr", type=float, default=0, help="cosine schedule's last lr")
    a("--workers", default=10, type=int)
    a(
        "--dump_path",
        type=str,
        default="./ckpt/linear",
        help="checkpoint.pth.tar and metrics.csv (original default: '.'; ./ckpt is git-ignored)",
    )
    a("--seed", type=int, default=31)
    a(
        "--restart",
        type=bool_flag,
        default=True,
        help="ours: continue the evaluation in --dump_path (default, as the original); false starts from "
        "scratch and moves its files to --dump_path/previous-N",
    )
    swav_flags.add_dist_args(p)  # --local_rank, --dist_url, --world_size, --rank, --device ...
    # ours
    a("--image_size", type=int, default=224, help="ours: crop size (val: resize size*256/224, centre crop)")
    a("--small_images", type=bool_flag, default=None, help="ours: default taken from the checkpoint")
    a("--print_freq", type=int, default=50, help="ours")
    a(
        "--save_freq",
        type=int,
        default=0,
        help="ours: also checkpoint every N iterations within an epoch (docs/resume.md)",
    )
    a(
        "--pooled_bn",
        type=bool_flag,
        default=False,
        help="ours: BatchNorm1d on the globally pooled features (what --use_bn true did here before)",
    )
    return p


def parse_args(argv=None):
    return swav_flags.finish_eval_linear_args(build_parser().parse_args(argv))


@cli_main
def main(argv=None):
    return launch_in_place(run_eval_linear, parse_args(argv))


if __name__ == "__main__":
    main()
