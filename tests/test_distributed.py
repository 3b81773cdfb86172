"""Two CPU processes with gloo stay in sync (DDP + shuffle-BN across ranks)."""

import os
import socket

import torch
from moco_scripts import main_moco

from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_dump(args):
    """Worker: train, then every rank writes its own weights."""
    model = run_pretraining(args, build_moco)
    torch.save(model.state_dict(), os.path.join(args.ckpt_dir, f"rank{args.rank}.pt"))


def test_two_gloo_processes_hold_identical_weights(tiny_data, tmp_path):
    args = main_moco.parse_args(
        [
            "-a",
            "resnet18",
            "--mlp",
            "--aug-plus",
            "--moco-t",
            "0.2",
            "-b",
            "8",
            "--moco-k",
            "32",
            "--image-size",
            "16",
            "--small-images",
            "-j",
            "0",
            "-p",
            "100",
            "--epochs",
            "1",
            "--seed",
            "0",
            "--multiprocessing-distributed",
            "--cpu-procs",
            "2",
            "--world-size",
            "1",
            "--rank",
            "0",
            "--dist-url",
            f"tcp://127.0.0.1:{free_port()}",
            "--ckpt-dir",
            str(tmp_path),
            tiny_data,
        ]
    )
    launch(train_and_dump, args)
    s0 = torch.load(tmp_path / "rank0.pt")
    s1 = torch.load(tmp_path / "rank1.pt")
    assert s0.keys() == s1.keys()
    # Parameters and the queue are shared state; BN running statistics are
    # per-rank in DDP (as in the original) and are left out.
    shared = [k for k in s0 if "running_" not in k and not k.endswith("num_batches_tracked")]
    assert len(shared) > 100
    for k in shared:
        assert torch.allclose(s0[k], s1[k], atol=1e-6), k
    # The weights moved (so the comparison means something) and the queue was filled by both ranks' keys.
    # 30 images per rank, 4 per step: 7 steps of 8 gathered keys.
    assert int(s0["queue_ptr"]) == 7 * 8 % 32
    assert (tmp_path / "checkpoint_0000.pth.tar").exists()
