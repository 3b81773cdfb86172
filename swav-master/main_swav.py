#!/usr/bin/env python3
"""SwAV pretraining (Tab5 of the paper's Reproduction.md).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly (one process; GPU or CPU). Flags and files: docs/swav.md."""
from selfsup.errors import cli_main
from selfsup.swav_launch import finish_distributed, init_distributed
from selfsup.swav_train import build_parser, finish_args, run_swav

DISTILL = False


def parse_args(argv=None):
    p = build_parser("SwAV + DisCo distillation" if DISTILL else "SwAV pretraining", distill=DISTILL)
    return finish_args(p.parse_args(argv), distill=DISTILL)


@cli_main
def main(argv=None):
    args = init_distributed(parse_args(argv))
    try:
        return run_swav(args, distill=DISTILL)
    finally:
        finish_distributed(args)


if __name__ == "__main__":
    main()
