"""Learning-rate schedules of the original scripts, as pure functions."""
import math


def epoch_lr(base_lr, epoch, epochs, cos=False, schedule=(), gamma=0.1):
    """Per-epoch lr: half-cosine from base_lr to 0 over `epochs` with `cos`,
    else multiplied by `gamma` at each milestone of `schedule` already reached."""
    if cos:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr * gamma ** sum(epoch >= m for m in schedule)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
