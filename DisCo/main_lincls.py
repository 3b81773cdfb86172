#!/usr/bin/env python3
"""Linear evaluation of a DisCo student: lr halved at 5, 10, ..., 45, 60, 80;
x0.5 at every milestone of any --schedule (orig:DisCo/main_lincls.py:59, 515-519).

The work is done by selfsup.engine.lincls."""

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.lincls import run_lincls
from selfsup.engine.runtime import launch

SCHEDULE = (5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80)


def parse_args(argv=None):
    p = cli.lincls_parser("Linear evaluation (DisCo schedule)", lr=30.0, epochs=100, schedule=SCHEDULE, gamma=0.5)
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(run_lincls, parse_args(argv))


if __name__ == "__main__":
    main()
