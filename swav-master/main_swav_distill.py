#!/usr/bin/env python3
"""SwAV + DisCo: SwAV pretraining of a student distilled from a frozen SwAV teacher (Tab5).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly. The teacher is --pretrained (or --teacher). Flags and files: docs/swav.md."""

import argparse
import functools

from selfsup.cli import swav_flags
from selfsup.cli.swav_flags import bool_flag
from selfsup.core.errors import cli_main
from selfsup.engine.runtime import launch_in_place
from selfsup.engine.swav_train import run_swav


def add_teacher_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    a = p.add_argument
    a("--pretrained", default="", type=str, help="teacher checkpoint (official SwAV layout or ours)")
    a("--teacher", default="", type=str, help="same as --pretrained")
    a("--teacher_arch", default="resnet50", type=str, help="ours: teacher architecture")
    a("--teacher_hidden_mlp", default=None, type=int, help="ours: default read from the checkpoint")
    a(
        "--mse_weight",
        default=1.0,
        type=float,
        help="ours: weight of the MSE term, which the original adds to the summed SwAV loss before dividing "
        "by len(--crops_for_assign): loss = swav + mse_weight * MSE / len(crops_for_assign) (original: 1)",
    )
    a(
        "--teacher_normalize",
        default=False,
        type=bool_flag,
        help="ours: L2-normalise the teacher's embedding (original: false, the MSE pulls the normalised "
        "student toward the raw teacher projection)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    p = swav_flags.parser("SwAV + DisCo distillation")
    swav_flags.add_swav_args(p)  # --data_path, multi-crop, --crops_for_assign ... --epoch_queue_starts
    swav_flags.add_swav_optim_args(p)  # --epochs, --batch_size, --base_lr ... --start_warmup
    swav_flags.add_swav_run_args(p)  # --arch, --hidden_mlp, --workers ... --dump_path, --restart, --seed
    swav_flags.add_dist_args(p)  # --local_rank, --dist_url, --world_size, --rank, --device ...
    swav_flags.add_swav_ours_args(p)  # --small_images, --amp_dtype, --print_freq, --channels_last, --precision
    return add_teacher_args(p)  # --pretrained/--teacher, --teacher_arch ... --teacher_normalize


def parse_args(argv=None):
    return swav_flags.finish_swav_args(build_parser().parse_args(argv), distill=True)


@cli_main
def main(argv=None):
    return launch_in_place(functools.partial(run_swav, distill=True), parse_args(argv))


if __name__ == "__main__":
    main()
