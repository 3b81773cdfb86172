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
from selfsup.core.errors import UserError
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
        # Each rank draws its own augmentation seeds and has its own RNG
        # streams: a rerun on N processes needs all N of both, by rank.
        ranks = rs.gather_objects((loader.position(batches_done), rs.capture_rng()))
        if du.is_main_process():
            samplers, rngs = [s for s, _ in ranks], [r for _, r in ranks]
            self.save(path, epoch, iteration=batches_done, sampler=samplers, rng=rngs, **extra)
        return path

    def restore(self, ckpt: dict, optimizer_required: bool = True) -> None:
        """Optimizer and grad-scaler state of a checkpoint written by save()
        (the model's weights are loaded, and checked, by the caller)."""
        if optimizer_required or "optimizer" in ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.prec is not None:
            self.prec.load_state_dict(ckpt.get("scaler"))


SAMPLER_KEYS = ("epoch", "perm_seed", "aug_seed", "start")


def mid_epoch_state(ckpt: dict, path: str) -> dict | None:
    """The mid-epoch entries of `ckpt` ({"iteration", "sampler", "rng"}: one
    sampler position and one RNG state per rank), checked against this run's
    processes; None for an end-of-epoch checkpoint. Anything malformed, or
    written by another number of processes, is one line naming the file."""
    if ckpt.get("iteration") is None:
        return None
    sampler, rng = ckpt.get("sampler"), ckpt.get("rng")
    if isinstance(sampler, dict) and isinstance(rng, list):  # before per-rank positions: rank 0's for all
        sampler = [sampler] * len(rng)
    where = f"epoch {ckpt.get('epoch')} iteration {ckpt.get('iteration')}"
    if not (isinstance(sampler, list) and isinstance(rng, list) and len(sampler) == len(rng) > 0):
        raise UserError(f"mid-epoch checkpoint '{path}' ({where}) has no per-process sampler and RNG states")
    for s in sampler:
        if not (isinstance(s, dict) and all(isinstance(s.get(k), int) for k in SAMPLER_KEYS)):
            raise UserError(
                f"mid-epoch checkpoint '{path}': its sampler position {s!r:.80} is malformed "
                f"(expected {', '.join(SAMPLER_KEYS)} as integers)"
            )
    if len(rng) != du.world_size():
        raise UserError(
            f"'{path}' was saved at {where} of a {len(rng)}-process run; this run has {du.world_size()}: "
            f"resume it on {len(rng)} processes (the same launch flags), or continue from an end-of-epoch checkpoint"
        )
    try:
        rs.check_rng_state(rng[du.rank()])
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise UserError(
            f"mid-epoch checkpoint '{path}': the RNG state of rank {du.rank()} is malformed ({exc})"
        ) from None
    return {"iteration": int(ckpt["iteration"]), "sampler": sampler, "rng": rng}


def continue_mid_epoch(loader: ResumableLoader, mid: dict) -> None:
    """Put this rank's loader at the checkpoint's batch and its RNG streams
    where they were (after loader.set_epoch)."""
    loader.resume_at(mid["sampler"][du.rank()])
    rs.restore_rng(mid["rng"][du.rank()])
