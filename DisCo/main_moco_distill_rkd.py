#!/usr/bin/env python3
"""MoCo-v2 + RKD distillation (Tab2); with --use-mse also DisCo's MSE term."""

import functools

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.disco import build_moco_rkd


def parse_args(argv=None):
    p = cli.common_parser("MoCo-v2 + RKD distillation", lr=0.03, epochs=200, schedule=(120, 160), wd=1e-4)
    cli.add_moco_args(p)
    cli.add_teacher_args(p)
    cli.resume_from_ckpt_dir(cli.add_save_freq_arg(p))
    p.add_argument("--use-mse", action="store_true", help="add DisCo's MSE term (RKD+DisCo)")
    # The original's loss: ce + dist + angle on view 1 (orig DisCo/main_moco_distill_rkd.py:457-474).
    p.add_argument(
        "--rkd-dist-weight",
        default=1.0,
        type=float,
        help="weight of the distance loss (original: 1; the RKD paper's: 25)",
    )
    p.add_argument(
        "--rkd-angle-weight",
        default=1.0,
        type=float,
        help="weight of the angle loss (original: 1; the RKD paper's: 50)",
    )
    p.add_argument(
        "--rkd-views",
        default=1,
        type=int,
        choices=[1, 2],
        help="views the RKD terms relate: 1 (the first, original) or 2 (both)",
    )
    return cli.finish_distill(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(functools.partial(run_pretraining, build_model=build_moco_rkd), parse_args(argv))


if __name__ == "__main__":
    main()
