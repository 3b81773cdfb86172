"""Learning-rate schedules of the original scripts, as pure functions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch


def epoch_lr(
    base_lr: float, epoch: int, epochs: int, cos: bool = False, schedule: Sequence[int] = (), gamma: float = 0.1
) -> float:
    """Per-epoch lr: half-cosine from base_lr to 0 over `epochs` with `cos`,
    else multiplied by `gamma` at each milestone of `schedule` already reached."""
    if cos:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr * gamma ** sum(epoch >= m for m in schedule)


def moco_lincls_gamma(schedule: Sequence[int]) -> float:
    """x0.1 with 2 milestones, x0.5 with 11, no decay otherwise (by the list's length).

    DisCo-pytorch's moco/main_lincls.py and yt_main_lincls_schedule.py pick the
    factor from the number of milestones (orig:moco/main_lincls.py:516-526), so
    MoCo's `60 80` steps x0.1, the 11-entry DisCo list halves, and any other
    list leaves the lr constant."""
    return {2: 0.1, 11: 0.5}.get(len(schedule), 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
