#!/usr/bin/env python3
"""Does a MoCo-v2 teacher's embedding stay spread out? A sweep of the
teacher's flags on one data set, for the question docs/disco.md asks before
distilling: DisCo pulls the student onto the teacher's final (projection)
embedding, so a teacher that maps every image to nearly one vector has
nothing to give.

For each variant (the demo's teacher flags as they were, with MoCo's 20%
crops, and one change) it trains a ResNet-18 teacher with moco/main_moco.py
for the demo teacher's 16 epochs, then prints:
  min InfoNCE (epoch)   the lowest epoch-mean training loss, and its epoch
  last InfoNCE          the last epoch's, beside ln(K+1) (equal logits)
  kNN top-1             of the backbone (val against train, k=20)
  spread                mean pairwise cosine of the final embedding of 256
                        training images (eval transform, BN in eval mode):
                        the figure DisCo prints before it trains
A random init's spread is printed first, for reference.

  python benchmarks/teacher_spread.py --data data/digits      (about 2.5 min a variant on 2 idle cores)
  python benchmarks/teacher_spread.py --data data/builtin --variants base crop-min-0.8
"""

import argparse
import csv
import os
import shlex
import subprocess
import sys

import torch

from selfsup.analysis.knn import checkpoint_knn
from selfsup.core.errors import UserError, cli_main
from selfsup.engine import collapse
from selfsup.engine.pretrain import infonce_history, spread_sample
from selfsup.models.encoders import build_query_encoder
from selfsup.models.teacher import load_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo's first teacher flags, with MoCo's 20% crops (tools/demo.py adds
# --crop-min 0.8 since this sweep), written out so that the sweep does not
# change when the demo does. True: a switch.
BASE = {
    "--lr": "0.03",
    "--mlp": True,
    "--moco-t": "0.2",
    "--moco-m": "0.99",
    "--moco-k": "1024",
    "--aug-plus": True,
    "--cos": True,
    "--bn-splits": "2",
}
# Each variant: the flags it changes (None: left out).
VARIANTS = {
    "base": {},
    "bn-splits-1": {"--bn-splits": "1"},
    "lr-0.01": {"--lr": "0.01"},
    "lr-0.1": {"--lr": "0.1"},
    "no-cos": {"--cos": None},
    "t-0.07": {"--moco-t": "0.07"},
    "no-mlp": {"--mlp": None},
    "k-256": {"--moco-k": "256"},
    "k-4096": {"--moco-k": "4096"},
    "m-0.9": {"--moco-m": "0.9"},
    "wd-5e-4": {"--wd": "5e-4"},
    "crop-min-0.5": {"--crop-min": "0.5"},
    "crop-min-0.8": {"--crop-min": "0.8"},
}


def variant_flags(name: str) -> dict:
    flags = dict(BASE, **VARIANTS[name])
    return {k: v for k, v in flags.items() if v is not None}


def flag_args(flags: dict) -> list:
    """The flags as arguments: a switch alone, others followed by their value."""
    return [a for k, v in flags.items() for a in ([k] if v is True else [k, str(v)])]


def command_line(flags: dict) -> str:
    """The flags as printed (and pasted into a shell)."""
    return shlex.join(flag_args(flags))


def random_init_spread(images: torch.Tensor) -> float:
    """The spread of a freshly drawn ResNet-18 with the MoCo-v2 head (eval BN)."""
    args = argparse.Namespace(arch="resnet18", moco_dim=128, mlp=True, hidden=-1, small_images=False)
    torch.manual_seed(0)
    encoder = build_query_encoder(args).eval()
    return collapse.embedding_spread(lambda x: encoder(x), images)


def train_command(flags: dict, data: str, folder: str, epochs: int, seed: int) -> list:
    """The argument list of one variant's main_moco.py run (no shell: any path works)."""
    cmd = [sys.executable, "-u", "main_moco.py", "-a", "resnet18", "-b", "64", "--image-size", "32", "-j", "1"]
    cmd += ["-p", "1000", "--resume", "", "--seed", str(seed), *flag_args(flags), "--epochs", str(epochs)]
    return cmd + ["--ckpt-dir", os.path.join(folder, "ckpt"), data]


def train(name: str, flags: dict, data: str, out: str, epochs: int, seed: int) -> str:
    folder = os.path.join(out, name)
    cmd = train_command(flags, data, folder, epochs, seed)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "pretrain.log"), "w") as log:
        # One thread, as the demo's steps (tools/pipeline.py): the same arithmetic, run for run.
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        code = subprocess.call(cmd, cwd=os.path.join(REPO, "moco"), stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise UserError(f"variant {name}: main_moco.py exited {code}; see {folder}/pretrain.log")
    return folder


def report(name: str, folder: str, data: str, images: torch.Tensor, epochs: int, queue: int) -> str:
    """One table row: the loss curve's minimum and end, kNN and spread."""
    with open(os.path.join(folder, "ckpt", "metrics.csv"), newline="") as f:
        losses = infonce_history(list(csv.DictReader(f)))
    best = min(range(1, len(losses)), key=losses.__getitem__) if len(losses) > 1 else 0  # epoch 0: a random queue
    ckpt = os.path.join(folder, "ckpt", f"checkpoint_{epochs - 1:04d}.pth.tar")
    spread = collapse.embedding_spread(load_teacher("resnet18", ckpt).eval(), images)
    knn = checkpoint_knn("resnet18", ckpt, data, 32)
    return (
        f"| {name} | {losses[best]:.2f} ({best}) | {losses[-1]:.2f} / {collapse.chance_infonce(queue):.2f} | {knn:.1f} "
        f"| {spread:.3f} |"
    )


@cli_main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "data", "digits"))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=os.path.join(REPO, "runs", "teacher_spread"))
    args = p.parse_args()
    data, out = os.path.abspath(args.data), os.path.abspath(args.out)
    torch.set_num_threads(1)
    images = spread_sample(data, 32)
    print(f"random init ResNet-18 + MoCo-v2 head: spread {random_init_spread(images):.3f}", flush=True)
    print(f"\n{args.epochs} epochs on {data}, batch 64, 32 px, seed {args.seed}; flags: {command_line(BASE)}\n")
    print("| variant | min InfoNCE (epoch) | last InfoNCE / ln(K+1) | kNN top-1 | spread |")
    print("|---|---|---|---|---|", flush=True)
    for name in args.variants:
        flags = variant_flags(name)
        folder = train(name, flags, data, out, args.epochs, args.seed)
        print(report(name, folder, data, images, args.epochs, int(flags["--moco-k"])), flush=True)


if __name__ == "__main__":
    main()
