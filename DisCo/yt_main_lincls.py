#!/usr/bin/env python3
"""Linear evaluation with MoCo's schedule (lr x0.1 at 60 and 80), used with
--learning-rate 30.0. The original repository has no DisCo/yt_main_lincls.py;
its moco/yt_main_lincls_schedule.py is this evaluation: moco/main_lincls.py
with default --schedule 60 80 and the same milestone-count rule (x0.1 for
two, x0.5 for eleven, else none; orig:moco/yt_main_lincls_schedule.py:58, 518-527).

The work is done by selfsup.engine.lincls."""

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.lincls import run_lincls
from selfsup.engine.optim import moco_lincls_gamma
from selfsup.engine.runtime import launch


def parse_args(argv=None):
    p = cli.lincls_parser(
        "Linear evaluation (MoCo schedule)", lr=30.0, epochs=100, schedule=(60, 80), gamma=moco_lincls_gamma
    )
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(run_lincls, parse_args(argv))


if __name__ == "__main__":
    main()
