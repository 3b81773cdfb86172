"""The loaders a loop builds from its flags (-b, -j, the process group,
--seed), over the one resumable loader of selfsup.data.folders."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from torch.utils.data import Dataset

from selfsup.data import folders as D


def train_loader(
    dataset: Dataset, args: argparse.Namespace, drop_last: bool = True, collate_fn: Callable | None = None
) -> D.ResumableLoader:
    """Shuffled with the run's seed, sharded over the processes."""
    return D.make_loader(
        dataset,
        args.batch_size,
        args.workers,
        shuffle=True,
        drop_last=drop_last,
        distributed=args.distributed,
        seed=args.seed,
        collate_fn=collate_fn,
    )


def train_val_loaders(
    train_set: Dataset, val_set: Dataset, args: argparse.Namespace
) -> tuple[D.ResumableLoader, D.ResumableLoader]:
    """A linear evaluation's: every training image each epoch, and the whole
    val set in order in every process (it is not sharded)."""
    val = D.make_loader(val_set, args.batch_size, args.workers, shuffle=False, drop_last=False, distributed=False)
    return train_loader(train_set, args, drop_last=False), val
