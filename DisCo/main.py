#!/usr/bin/env python3
"""DisCo: MoCo-v2 for a lightweight student plus an MSE term that makes its
final embedding match a frozen self-supervised teacher's (Tab1, 4, 6)."""

import functools

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.disco import build_disco


def parse_args(argv=None):
    p = cli.common_parser("DisCo distillation", lr=0.03, epochs=200, schedule=(120, 160), wd=1e-4)
    cli.add_moco_args(p)
    cli.add_teacher_args(p)
    cli.resume_from_ckpt_dir(cli.add_save_freq_arg(p))
    p.add_argument("--only-mse", action="store_true", help="drop the contrastive loss")
    return cli.finish_distill(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(functools.partial(run_pretraining, build_model=build_disco), parse_args(argv))


if __name__ == "__main__":
    main()
