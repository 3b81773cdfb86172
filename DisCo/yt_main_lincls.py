#!/usr/bin/env python3
"""Linear evaluation with MoCo's schedule (lr x0.1 at 60 and 80), as the
original's yt_main_lincls.py; used with --learning-rate 30.0."""
from selfsup import cli
from selfsup.errors import cli_main
from selfsup.launch import launch
from selfsup.lincls import run_lincls


def parse_args(argv=None):
    p = cli.lincls_parser("Linear evaluation (MoCo schedule)", lr=30.0, schedule=(60, 80), gamma=0.1)
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(run_lincls, parse_args(argv))


if __name__ == "__main__":
    main()
