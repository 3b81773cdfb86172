#!/usr/bin/env python3
"""SwAV pretraining (Tab5 of the paper's Reproduction.md).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly (one process; GPU or CPU). Flags and files: docs/swav.md."""

import argparse

from selfsup.cli import swav_flags
from selfsup.core.errors import cli_main
from selfsup.engine.runtime import launch_in_place
from selfsup.engine.swav_train import run_swav


def build_parser() -> argparse.ArgumentParser:
    p = swav_flags.parser("SwAV pretraining")
    swav_flags.add_swav_args(p)  # --data_path, multi-crop, --crops_for_assign ... --epoch_queue_starts
    swav_flags.add_swav_optim_args(p)  # --epochs, --batch_size, --base_lr ... --start_warmup
    swav_flags.add_swav_run_args(p)  # --arch, --hidden_mlp, --workers ... --dump_path, --restart, --seed
    swav_flags.add_dist_args(p)  # --local_rank, --dist_url, --world_size, --rank, --device ...
    return swav_flags.add_swav_ours_args(p)  # --small_images, --amp_dtype, --print_freq, --channels_last, --precision


def parse_args(argv=None):
    return swav_flags.finish_swav_args(build_parser().parse_args(argv))


@cli_main
def main(argv=None):
    return launch_in_place(run_swav, parse_args(argv))


if __name__ == "__main__":
    main()
