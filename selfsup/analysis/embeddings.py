"""Embedding files: `<dir>/<name>_embed.npy` (N x D float32) and
`<dir>/<name>_labels.npy` (N int64), plus an optional `<dir>/classes.txt`
(one class name a line, index = label). `extract` runs a backbone over a
data loader (torch is imported only there); the rest is plain numpy, so
the analysis scripts that only read these files stay quick to start.
selfsup.analysis.export writes them from a checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write, check_name

if TYPE_CHECKING:
    import torch

EMBED_SUFFIX = "_embed.npy"
LABELS_SUFFIX = "_labels.npy"
CLASSES_FILE = "classes.txt"


def embed_paths(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"{name}{EMBED_SUFFIX}", folder / f"{name}{LABELS_SUFFIX}"


def save(
    folder: str | os.PathLike,
    name: str,
    embed: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the embedding and label files (and classes.txt when names are
    given), each whole or not at all; returns the two paths. `name` must be
    a plain file name: its files stay inside `folder`."""
    check_name(name, "name", folder, (EMBED_SUFFIX, LABELS_SUFFIX))
    embed = np.asarray(embed, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(embed) != len(labels):
        raise UserError(f"{name}: {len(embed)} embeddings but {len(labels)} labels")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    e_path, l_path = embed_paths(folder, name)
    for path, array in ((e_path, embed), (l_path, labels)):
        with atomic_write(path, what="embedding file") as f:
            np.save(f, array)
    if class_names is not None:
        with atomic_write(folder / CLASSES_FILE, "w", what="class list") as f:
            f.write("".join(f"{c}\n" for c in class_names))
    return e_path, l_path


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """np.load of a plain .npy array; UserError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a numpy .npy array ({' '.join(str(exc).split())[:120]})") from None


def load(folder: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `<name>_embed.npy` and `<name>_labels.npy`; UserError when a file is
    missing, the embeddings are not 2-D, or the lengths disagree."""
    e_path, l_path = embed_paths(folder, name)
    for p in (e_path, l_path):
        if not p.is_file():
            raise UserError(f"{p}: no such file (expected by embedding name {name!r} in {folder})")
    embed = load_npy(e_path)
    labels = load_npy(l_path).reshape(-1)
    if embed.ndim != 2:
        raise UserError(f"{e_path}: expected a 2-D array (samples x features), got shape {embed.shape}")
    if len(embed) != len(labels):
        raise UserError(
            f"{e_path} has {len(embed)} rows but {l_path} has {len(labels)} labels; they must come from the same export"
        )
    return embed, labels


def names_in(folder: str | os.PathLike) -> list[str]:
    """Names of the complete embedding/label pairs in a folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: embedding folder does not exist (export embeddings first, see DisCo/export_embed.py)"
        )
    names = sorted(p.name[: -len(EMBED_SUFFIX)] for p in folder.glob(f"*{EMBED_SUFFIX}"))
    return [n for n in names if embed_paths(folder, n)[1].is_file()]


def class_names(folder: str | os.PathLike) -> list[str] | None:
    """Class names from `<folder>/classes.txt`, or None."""
    p = Path(folder) / CLASSES_FILE
    if not p.is_file():
        return None
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def extract(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` (eval mode, no grad) over `loader` of (images, labels);
    returns (embeddings N x D float32, labels N int64) as numpy arrays."""
    import torch

    model.eval().to(device)
    feats, labs = [], []
    with torch.no_grad():
        for images, labels in loader:
            out = model(images.to(device, non_blocking=True))
            feats.append(out.reshape(out.shape[0], -1).float().cpu())
            labs.append(labels.reshape(-1).cpu())
    if not feats:
        raise UserError("the data loader yielded no images")
    return torch.cat(feats).numpy(), torch.cat(labs).numpy().astype(np.int64)


def add_embedding_args(p: argparse.ArgumentParser, default_dir: str, names_use: str) -> argparse.ArgumentParser:
    """--embed-dir and --names of the scripts that read exported embeddings."""
    p.add_argument(
        "--embed-dir",
        default=default_dir,
        help="folder of <name>_embed.npy / <name>_labels.npy pairs (default: results/embeddings)",
    )
    p.add_argument(
        "--names",
        nargs="+",
        default=None,
        help=f"embedding names {names_use} (default: every pair in --embed-dir, sorted)",
    )
    return p
