#!/usr/bin/env python3
"""Semi-supervised linear evaluation (Fig5): the classifier trains on a 1% or
10% labelled subset. Either point DIR at a subset made by
data/imagenet_1_fraction.py, or give --label 1|10 to draw a seeded
class-balanced subset of DIR/train on the fly.

The work is done by selfsup.engine.lincls."""

from selfsup.cli import flags as cli
from selfsup.core.errors import UserError, cli_main
from selfsup.engine.lincls import run_lincls
from selfsup.engine.runtime import launch


def parse_args(argv=None):
    # The original halves the lr at 60 and 80: 3 -> 1.5 -> 0.75 with the commands'
    # --learning-rate 3.0 (orig:DisCo/main_lincls_semi.py:58, 524-529).
    p = cli.lincls_parser("Semi-supervised linear evaluation", lr=30.0, epochs=100, schedule=(60, 80), gamma=0.5)
    p.add_argument(
        "--label",
        default=None,
        type=float,
        help="percent of each class's train images to use (default: all of DIR/train)",
    )
    args = cli.finish_lincls(p.parse_args(argv))
    if args.label is not None and not 0 < args.label <= 100:
        raise UserError(f"--label {args.label}: expected a percentage in (0, 100]")
    return args


@cli_main
def main(argv=None):
    launch(run_lincls, parse_args(argv))


if __name__ == "__main__":
    main()
