"""The flags of tools/export.py (selfsup.export.exporter does the work)."""

from __future__ import annotations

import argparse

from selfsup.cli.flags import add_unsafe_load_arg
from selfsup.core import checks
from selfsup.export.exporter import FORMATS


def add_export_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """CHECKPOINT, --out, --format, -a, --with-head, --image-size, --force."""
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="any checkpoint of ours (MoCo-v2, DisCo, RKD, SwAV, SwAV+DisCo, lincls, semi) or a release file "
        "(MoCo-v2, SwAV, DeepCluster-v2, SeLa-v2, DINO, MoCo-v3, DINOv2, the DisCo students)",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the file to write (.safetensors, .onnx, or .pt for TorchScript)"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="safetensors (default; keys of the model's own library), onnx (dynamic batch, ONNX Runtime) or "
        "torchscript; default: what --out's suffix says",
    )
    p.add_argument(
        "-a",
        "--arch",
        default=None,
        metavar="ARCH",
        help="the checkpoint's backbone (default: its 'arch' entry; release files need it: dino_vits16, ...)",
    )
    p.add_argument(
        "--with-head",
        action="store_true",
        help="keep the projection head (the embedding DisCo matched) as its own module: projection_head.* "
        "in safetensors (what --teacher needs), a second output of the graph formats",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="input size of the check and of the ONNX/TorchScript graph (default: the checkpoint's, else 224, "
        "32 for a small-images stem)",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never the checkpoint itself)")
    return add_unsafe_load_arg(p)


def export_parser() -> argparse.ArgumentParser:
    p = checks.FlagParser(
        description="Export a checkpoint's backbone for timm / torchvision (safetensors), ONNX Runtime or "
        "TorchScript, checked against the checkpoint before the command ends (docs/export.md)"
    )
    return add_export_args(p)
