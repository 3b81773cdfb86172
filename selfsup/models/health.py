"""Is a network's state usable? Non-finite tensors and BatchNorm running
variances that exploded in training (BN groups of a few images: a DisCo
MobileNet student at -b 16 with 8 BN groups reached 2.8e16 in 3 steps),
found by reading the state, so that an evaluation that meets NaN at its
first batch blames the checkpoint, not the learning rate."""

from __future__ import annotations

import torch
import torch.nn as nn

# Running variances of healthy networks stay many orders of magnitude below
# this (their activations are O(1) to O(100)); above it the next layer's
# inputs overflow or vanish.
EXPLODED_VARIANCE = 1e8


def nonfinite_tensor(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating tensor of `state` holding NaN or inf, by key."""
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def largest_running_variance(model: nn.Module) -> tuple[str, float] | None:
    """(key, value) of the largest BatchNorm running variance of `model`."""
    best = None
    for name, module in model.named_modules():
        var = getattr(module, "running_var", None)
        if isinstance(module, nn.modules.batchnorm._NormBase) and torch.is_tensor(var) and var.numel():
            top = float(var.detach().float().max())
            if best is None or top > best[1]:
                best = (f"{name}.running_var" if name else "running_var", top)
    return best


def state_problem(model: nn.Module, skip_prefix: str | None = None) -> str | None:
    """What is wrong with `model`'s weights and statistics, in words, or None.
    `skip_prefix`: a part left out (the classifier an evaluation trains)."""
    state = {k: v for k, v in model.state_dict().items() if not (skip_prefix and k.startswith(skip_prefix))}
    bad = nonfinite_tensor(state)
    if bad is not None:
        return f"its {bad} holds NaN or inf values"
    largest = largest_running_variance(model)
    if largest is not None and largest[1] > EXPLODED_VARIANCE:
        return f"its BatchNorm running variances reach {largest[1]:.2g} ({largest[0]})"
    return None


def bn_warning(model: nn.Module, what: str) -> str | None:
    """A warning line when `model`'s BatchNorm statistics have exploded."""
    largest = largest_running_variance(model)
    if largest is None or not largest[1] > EXPLODED_VARIANCE:  # NaN counts as exploded
        return None
    return (
        f"=> warning: the BatchNorm running variances of {what} reach {largest[1]:.2g} ({largest[0]}): "
        "its statistics exploded (BN groups of too few images? raise -b or lower --bn-splits); an evaluation "
        "of this checkpoint will get non-finite features"
    )
