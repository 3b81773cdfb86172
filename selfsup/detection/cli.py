"""Flags of detection/train_net.py and the checks that need no detectron2 import."""

from __future__ import annotations

import argparse

from selfsup.core.checks import FlagParser
from selfsup.core.errors import UserError


def get_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        description="Fine-tune a converted ResNet in detectron2 (R-C4) and evaluate on VOC/COCO",
        epilog="Trailing KEY VALUE pairs override the config, e.g. MODEL.RESNETS.DEPTH 34 "
        "MODEL.RESNETS.RES2_OUT_CHANNELS 64",
    )
    p.add_argument("--config-file", default="", metavar="FILE", help="config yaml")
    p.add_argument(
        "--resume",
        action="store_true",
        help="resume from OUTPUT_DIR/last_checkpoint if present, else load MODEL.WEIGHTS",
    )
    p.add_argument("--eval-only", action="store_true", help="only evaluate")
    p.add_argument(
        "--num-gpus", type=int, default=1, help="GPUs per machine; 0 = CPU (1 also runs on the CPU without CUDA)"
    )
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous for multi-GPU runs (auto: a free local port); "
        "tcp://HOST:PORT of machine 0 for multi-machine runs",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides")
    return p


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(args: argparse.Namespace) -> None:
    """--num-gpus must fit this machine; 0 (or 1 on a machine without CUDA) means CPU."""
    if args.num_gpus < 0:
        raise UserError(f"--num-gpus {args.num_gpus}: must be 0 (CPU) or more")
    if args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        raise UserError(
            f"--num-machines {args.num_machines} --machine-rank {args.machine_rank}: "
            f"need num-machines >= 1 and 0 <= machine-rank < num-machines"
        )
    available = available_gpus()
    if args.num_gpus > 1 and args.num_gpus > available:
        raise UserError(
            f"--num-gpus {args.num_gpus}: this machine has {available} CUDA GPU(s); "
            f"use --num-gpus {max(available, 1)}" + (" (runs on the CPU)" if available == 0 else "")
        )
    if args.num_machines > 1 and args.num_gpus < 1:
        raise UserError(f"--num-machines {args.num_machines}: needs --num-gpus 1 or more")
    if args.num_machines > 1 and available == 0:
        raise UserError(f"--num-machines {args.num_machines}: multi-machine runs need CUDA GPUs")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise UserError(
            f"--num-machines {args.num_machines}: give --dist-url tcp://HOST:PORT "
            f"of machine 0 (auto works on one machine only)"
        )
