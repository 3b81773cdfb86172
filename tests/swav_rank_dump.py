"""Run under torchrun: SwAV pretraining, then every rank saves its own weights
as <dump_path>/rank<N>.pt (tests/test_swav.py compares them)."""

import importlib.util
import os
import sys

import torch

from selfsup.engine.runtime import launch_in_place
from selfsup.engine.swav_train import run_swav

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_swav():
    spec = importlib.util.spec_from_file_location("main_swav", os.path.join(REPO, "swav-master", "main_swav.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_and_dump(args):
    model = run_swav(args)
    torch.save(model.state_dict(), os.path.join(args.dump_path, f"rank{args.rank}.pt"))


if __name__ == "__main__":
    launch_in_place(train_and_dump, main_swav().parse_args(sys.argv[1:]))
