"""Run under torchrun: SwAV pretraining, then every rank saves its own weights
as <dump_path>/rank<N>.pt (tests/test_swav.py compares them)."""
import os
import sys

import torch

from selfsup.engine.swav_launch import finish_distributed, init_distributed
from selfsup.engine.swav_train import build_parser, finish_args, run_swav

if __name__ == "__main__":
    args = init_distributed(finish_args(build_parser("rank dump").parse_args(sys.argv[1:])))
    try:
        model = run_swav(args)
        torch.save(model.state_dict(), os.path.join(args.dump_path, f"rank{args.rank}.pt"))
    finally:
        finish_distributed(args)
