#!/usr/bin/env python3
"""MoCo-v2 pretraining of teachers and student baselines (Tab1 of the paper).

Flags and checkpoints are the original's (docs/flags.md); the work is done
by selfsup.engine.pretrain."""

import functools

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco


def parse_args(argv=None):
    p = cli.common_parser("MoCo-v2 pretraining", lr=0.03, epochs=200, schedule=(120, 160), wd=1e-4)
    cli.add_moco_args(p)
    cli.main_moco_defaults(cli.add_save_freq_arg(p))
    return cli.finish_moco(p.parse_args(argv))


@cli_main
def main(argv=None):
    args = parse_args(argv)
    launch(functools.partial(run_pretraining, build_model=build_moco), args)


if __name__ == "__main__":
    main()
