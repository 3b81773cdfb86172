"""Embedding files from a checkpoint: the backbone of a pretraining (or
linear-evaluation) checkpoint run over an ImageFolder tree, written in the
format of selfsup.analysis.embeddings (DisCo/export_embed.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from selfsup.analysis.embeddings import extract, save
from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.models.encoders import load_backbone


def first_per_class(targets: Sequence[int] | np.ndarray, limit: Optional[int]) -> np.ndarray:
    """Indices of the first `limit` samples of each class (all when limit is None)."""
    targets = np.asarray(targets)
    if limit is None:
        return np.arange(len(targets))
    keep = [np.flatnonzero(targets == c)[:limit] for c in np.unique(targets)]
    return np.sort(np.concatenate(keep))


def image_root(data: str | os.PathLike, split: str) -> Path:
    """The ImageFolder tree to embed: `<data>/<split>` when it exists, else
    `data` itself unless that is a train/ val/ parent lacking `split`."""
    data = Path(data)
    if (data / split).is_dir():
        return data / split
    if (data / "train").is_dir() or (data / "val").is_dir():
        raise UserError(f"data folder '{data}' has no {split}/ sub-folder (--split {split})")
    return data


def export_checkpoint(
    arch: str,
    checkpoint: str,
    data: str,
    out_dir: str,
    name: str,
    split: str = "val",
    image_size: Optional[int] = None,
    batch_size: int = 64,
    workers: int = 4,
    device: Optional[str] = None,
    max_per_class: Optional[int] = None,
) -> tuple[Path, Path, int, int]:
    """Embed the images of `data` with the backbone of `checkpoint` and save
    `<out_dir>/<name>_embed.npy`, `<name>_labels.npy` and `classes.txt`.

    image_size=None takes the checkpoint's own `image_size` entry (224 when it
    has none). Returns (embed path, labels path, number of images, width)."""
    if image_size is None:
        meta = ck.load_file(checkpoint, "--pretrained checkpoint")
        image_size = int(meta.get("image_size", 224)) if isinstance(meta, dict) else 224
        del meta
    model = load_backbone(arch, checkpoint)
    dataset = D.image_folder(str(image_root(data, split)), augment.eval_transform(image_size))
    subset = torch.utils.data.Subset(dataset, first_per_class(dataset.targets, max_per_class).tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    embed, labels = extract(model, loader, device)
    e_path, l_path = save(out_dir, name, embed, labels, class_names=dataset.classes)
    return e_path, l_path, len(labels), embed.shape[1]
