"""BatchNorm that normalises groups of the batch apart, within one forward.

One process standing in for several GPUs (``--bn-splits``) must give every
BatchNorm the view each GPU's BN had in the original (DDP without SyncBN):
the statistics of its own slice of the batch. Running the whole encoder
once per slice did that, with every convolution at 1/groups of the batch
and every running average updated `groups` times per forward. These layers
are swapped in for the BNs instead: the encoder runs once over the whole
batch, and each BN normalises the contiguous chunks of ``torch.tensor_split``
(uneven ones too) with their own statistics.

How: native ``F.batch_norm`` on each chunk (a view, no copy), then one
concatenation. The official MoCo CIFAR demo's alternative, a view
``(N, C, ...) -> (N/groups, groups*C, ...)`` and one BN call, groups
interleaved samples and has no such view for contiguous chunks (nor for
channels_last memory): folding them into the channels takes two copies
each way, which measured up to twice the time of a plain BN on CPU, while
the chunk calls cost about one plain BN plus the concatenation.

The layers keep the parameters, buffers and submodules of the BN they
replace, so state_dict keys and shapes do not change. They are converted in
with ``groups=1`` (plain BN) and grouped only inside :func:`bn_groups_set`,
so code that calls an encoder directly (monitors, tests) sees plain BN.
"""

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.core.errors import UserError


def bn_groups(batch_size: int, bn_splits: int) -> int:
    """How many groups a batch is cut into: `bn_splits`, but never groups of
    fewer than 2 samples (BN needs 2)."""
    return max(1, min(bn_splits, batch_size // 2))


def chunk_sizes(batch_size: int, groups: int) -> list[int]:
    """The sizes of torch.tensor_split's chunks: the first batch % groups
    chunks hold one sample more."""
    small, extra = divmod(batch_size, groups)
    return [small + 1] * extra + [small] * (groups - extra)


class _SplitBatchNorm:
    """Mixin over a BatchNorm class: batch statistics per group of the batch.

    groups: how many contiguous chunks (torch.tensor_split's) a batch is
    normalised in; at most bn_groups() of them, so no chunk has under 2
    samples. Running statistics are updated once per forward, from the first
    chunk only: under DDP (broadcast_buffers=True) every rank's BN buffers
    are overwritten by rank 0's at each forward, so the checkpoints of the
    original on `groups` GPUs (written by rank 0) hold running averages of
    rank 0's slices alone, i.e. of the first chunk here. (The official MoCo
    demo averages the groups' updates instead; the two-process tests leave
    running statistics out, as they differ per rank after the last step, so
    they do not decide this.) Momentum 0 (a frozen teacher,
    teacher.freeze_bn_statistics) leaves them as they are. Where batch
    statistics are not used (eval mode with running statistics) the layer
    is plain BN."""

    groups: int = 1
    applies_act: bool = False  # timm's BatchNormAct2d: drop and act follow the norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._normalise(x)
        return self.act(self.drop(y)) if self.applies_act else y

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        groups = bn_groups(x.shape[0], self.groups)
        uses_batch_statistics = self.training or self.running_mean is None
        if groups == 1 or not uses_batch_statistics:
            return _BatchNorm.forward(self, x)  # the norm alone (BatchNormAct2d's forward adds act)
        self._check_input_dim(x)
        factor = self._update_factor()
        outs = []
        # torch.split, not tensor_split: one backward node that concatenates
        # the chunks' gradients (tensor_split's slices each backpropagate a
        # zero-filled batch-sized gradient, which cost 4x a BN on CPU).
        for i, part in enumerate(torch.split(x, chunk_sizes(x.shape[0], groups))):  # views: no copy
            first = i == 0 and factor > 0  # only the first chunk moves the running averages
            outs.append(
                F.batch_norm(
                    part,
                    self.running_mean if first else None,
                    self.running_var if first else None,
                    self.weight,
                    self.bias,
                    True,
                    factor,
                    self.eps,
                )
            )
        return torch.cat(outs)

    def _update_factor(self) -> float:
        """The weight of this batch in the running averages (0: no update),
        counting the batch as native BN does."""
        if not (self.training and self.track_running_stats):
            return 0.0
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum


class SplitBatchNorm1d(_SplitBatchNorm, nn.BatchNorm1d):
    """nn.BatchNorm1d with per-group batch statistics (see _SplitBatchNorm)."""


class SplitBatchNorm2d(_SplitBatchNorm, nn.BatchNorm2d):
    """nn.BatchNorm2d with per-group batch statistics (see _SplitBatchNorm);
    also stands in for timm's BatchNormAct2d, keeping its drop and act."""


class SplitBatchNorm3d(_SplitBatchNorm, nn.BatchNorm3d):
    """nn.BatchNorm3d with per-group batch statistics (see _SplitBatchNorm)."""


def _split_types() -> list[tuple[type, type, bool]]:
    """(BN class, its split class, whether drop+act follow the norm)."""
    known = [
        (nn.BatchNorm1d, SplitBatchNorm1d, False),
        (nn.BatchNorm2d, SplitBatchNorm2d, False),
        (nn.BatchNorm3d, SplitBatchNorm3d, False),
    ]
    # timm is imported only by the backbones that need it; a BatchNormAct2d
    # can only exist once it has been.
    norm_act = sys.modules.get("timm.layers.norm_act")
    if norm_act is not None:
        known.append((norm_act.BatchNormAct2d, SplitBatchNorm2d, True))
    return known


def _as_split(bn: nn.Module, groups: int) -> nn.Module:
    """The split layer that replaces `bn`, sharing its parameters, buffers,
    submodules and settings (the same state_dict)."""
    if isinstance(bn, _SplitBatchNorm):
        bn.groups = groups
        return bn
    for bn_type, split_type, applies_act in _split_types():
        if type(bn) is bn_type:
            split = split_type.__new__(split_type)
            split.__dict__.update(bn.__dict__)
            split.groups, split.applies_act = groups, applies_act
            return split
    raise UserError(
        f"{type(bn).__module__}.{type(bn).__name__}: a BatchNorm layer that --bn-splits cannot "
        "split into groups (use --bn-splits 1)"
    )


def convert_split_bn(module: nn.Module, groups: int = 1) -> nn.Module:
    """`module` with every BatchNorm replaced by its split layer (in place;
    returned, since `module` itself may be a BN). groups=1: plain BN until
    bn_groups_set says otherwise."""
    if isinstance(module, _BatchNorm):
        return _as_split(module, groups)
    for name, child in module.named_children():
        converted = convert_split_bn(child, groups)
        if converted is not child:
            setattr(module, name, converted)
    return module


@contextlib.contextmanager
def bn_groups_set(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, the split layers of `module` normalise in `groups`
    groups; afterwards they return to what they were."""
    layers = [m for m in module.modules() if isinstance(m, _SplitBatchNorm)]
    before = [m.groups for m in layers]
    for m in layers:
        m.groups = groups
    try:
        yield
    finally:
        for m, g in zip(layers, before):
            m.groups = g
