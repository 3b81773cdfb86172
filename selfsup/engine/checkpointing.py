"""What the training loops save and restore: one builder of checkpoint
dicts and one writer for them, over the atomic file writer
(selfsup.core.checkpoint.save_checkpoint).

Every loop's checkpoint is ``{"epoch", "arch", "state_dict", "optimizer"}``
(MoCo's layout, ``state_dict`` keys ``module.``-prefixed), then the entries
fixed for the run (``run`` identity, ``small_images``, ``image_size``),
``scaler`` when the run's Precision has an enabled grad scaler, then what a
save adds (``best_acc1``, an LR scheduler's state, and for a mid-epoch
checkpoint ``iteration``, ``sampler`` and ``rng``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.engine import runstate as rs
from selfsup.engine.precision import Precision

if TYPE_CHECKING:
    from selfsup.data.folders import ResumableLoader


class CheckpointWriter:
    """Builds and writes the checkpoints of one run: `model` (a DDP wrapper
    or not), its `optimizer`, `prec` (None: no grad scaler) and the entries
    `fixed` for the run. `weights` gives the "state_dict" entry of another
    layout (e.g. SwAV's official one); by default the model's, ``module.``-prefixed."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        arch: str,
        prec: Precision | None = None,
        weights: Callable[[], dict] | None = None,
        **fixed,
    ):
        self.model, self.optimizer, self.arch, self.prec, self.fixed = model, optimizer, arch, prec, fixed
        self.weights = weights or (lambda: ck.prefixed_state(self.model))

    def state(self, epoch: int, **extra) -> dict:
        """The checkpoint dict after `epoch` epochs (plus the batches of a mid-epoch one)."""
        state = {
            "epoch": epoch,
            "arch": self.arch,
            "state_dict": self.weights(),
            "optimizer": self.optimizer.state_dict(),
            **self.fixed,
        }
        scaler = self.prec.state_dict() if self.prec is not None else None
        if scaler is not None:  # fp16: the loss scale goes on where it was
            state["scaler"] = scaler
        state.update(extra)
        return state

    def save(self, path: str, epoch: int, **extra) -> str:
        """Write state(epoch, **extra) to `path` atomically; the caller decides
        which process writes (the main one)."""
        ck.save_checkpoint(self.state(epoch, **extra), path)
        return path

    def save_mid_epoch(self, path: str, epoch: int, loader: ResumableLoader, batches_done: int, **extra) -> str:
        """A checkpoint from which a rerun continues exactly after `batches_done`
        batches of `epoch`: the sampler's position and every rank's RNG states.
        A collective (every rank gathers its RNG state); the main process writes."""
        rng = rs.gather_objects(rs.capture_rng())
        if du.is_main_process():
            self.save(path, epoch, iteration=batches_done, sampler=loader.position(batches_done), rng=rng, **extra)
        return path

    def restore(self, ckpt: dict, optimizer_required: bool = True) -> None:
        """Optimizer and grad-scaler state of a checkpoint written by save()
        (the model's weights are loaded, and checked, by the caller)."""
        if optimizer_required or "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.prec is not None:
            self.prec.load_state_dict(ckpt.get("scaler"))
