"""A node of a multi-node run of moco/main_moco.py (its flags, its launcher):
after training, every rank saves its own weights as <ckpt-dir>/rank<N>.pt,
which only rank 0's checkpoint would otherwise show. tests/test_two_nodes.py
starts two of these, with --multiprocessing-distributed or under torchrun."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moco_scripts import main_moco  # noqa: E402

from selfsup.core.errors import cli_main  # noqa: E402
from selfsup.engine.pretrain import run_pretraining  # noqa: E402
from selfsup.engine.runtime import launch  # noqa: E402
from selfsup.methods.moco import build_moco


def train_and_dump(args):
    model = run_pretraining(args, build_moco)
    os.makedirs(args.ckpt_dir, exist_ok=True)  # only rank 0 writes checkpoints, so only it made the folder
    torch.save(model.state_dict(), os.path.join(args.ckpt_dir, f"rank{args.rank}.pt"))


@cli_main
def main():
    launch(train_and_dump, main_moco.parse_args(sys.argv[1:]))


if __name__ == "__main__":
    main()
