#!/usr/bin/env python3
"""Linear evaluation of a SwAV or SwAV+DisCo checkpoint (Tab5).

Start with `python -m torch.distributed.launch --nproc_per_node=N`, `torchrun`,
or plainly (one process; GPU or CPU). Flags and files: docs/swav.md."""
from selfsup.core.errors import cli_main
from selfsup.engine.swav_eval import build_parser, finish_args, run_eval_linear
from selfsup.engine.swav_launch import finish_distributed, init_distributed


def parse_args(argv=None):
    return finish_args(build_parser().parse_args(argv))


@cli_main
def main(argv=None):
    args = init_distributed(parse_args(argv))
    try:
        return run_eval_linear(args)
    finally:
        finish_distributed(args)


if __name__ == "__main__":
    main()
