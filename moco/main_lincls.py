#!/usr/bin/env python3
"""Linear evaluation of a MoCo-v2 checkpoint, as DisCo-pytorch's copy of it:
lr halved at 5, 10, ..., 45, 60, 80 by default; the factor depends on how
many milestones --schedule has (x0.1 for two, x0.5 for eleven, else none;
orig:moco/main_lincls.py:58, 516-526). --gamma F fixes the factor.

The work is done by selfsup.engine.lincls."""

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.lincls import run_lincls
from selfsup.engine.optim import moco_lincls_gamma
from selfsup.engine.runtime import launch

SCHEDULE = (5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80)


def parse_args(argv=None):
    p = cli.lincls_parser(
        "Linear evaluation (MoCo-v2 checkpoints)", lr=30.0, epochs=100, schedule=SCHEDULE, gamma=moco_lincls_gamma
    )
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(run_lincls, parse_args(argv))


if __name__ == "__main__":
    main()
