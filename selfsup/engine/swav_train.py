"""The SwAV pretraining loop of swav-master/main_swav.py and
main_swav_distill.py (flags: selfsup.cli.swav_flags): multi-crop data, the
method (selfsup.methods.swav: SwAV, or SwAV + DisCo with a frozen teacher),
LARS, warmup + cosine per iteration, the feature queue, checkpoints in the
official SwAV layout and automatic restart from --dump_path."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.core.distributed import unwrap
from selfsup.core.errors import UserError
from selfsup.data import folders as D
from selfsup.data.multicrop import MultiCropTransform
from selfsup.engine import runstate as rs
from selfsup.engine.checkpointing import CheckpointWriter, continue_mid_epoch, mid_epoch_state
from selfsup.engine.lars import LARS
from selfsup.engine.loaders import train_loader
from selfsup.engine.precision import Precision
from selfsup.engine.progress import EpochMeters, MetricsWriter
from selfsup.engine.runstate import seed_everything
from selfsup.methods.swav import SwAV, build_swav, load_distill_teacher
from selfsup.models.swav import SwAVModel, load_official_state, official_state_dict

# Column titles of the method's loss parts in the progress lines.
PART_NAMES = {"loss_swav": "SwAV", "loss_mse": "MSE"}


def lr_schedule(args: argparse.Namespace, iters_per_epoch: int) -> np.ndarray:
    """Per-iteration lr: linear warmup from start_warmup, then cosine to final_lr."""
    warmup = np.linspace(args.start_warmup, args.base_lr, iters_per_epoch * args.warmup_epochs)
    rest = np.arange(iters_per_epoch * (args.epochs - args.warmup_epochs))
    cosine = args.final_lr + 0.5 * (args.base_lr - args.final_lr) * (1 + np.cos(math.pi * rest / max(len(rest), 1)))
    return np.concatenate((warmup, cosine))


def queue_path(args: argparse.Namespace) -> str:
    return os.path.join(args.dump_path, f"queue{args.rank}.pth")


def _log(msg):
    if du.is_main_process():
        print(msg, flush=True)


# Flags that define a SwAV run (the checkpoint's "run", compared on restart).
RUN_KEYS = (
    "arch",
    "hidden_mlp",
    "feat_dim",
    "nmb_prototypes",
    "size_crops",
    "nmb_crops",
    "min_scale_crops",
    "max_scale_crops",
    "crops_for_assign",
    "temperature",
    "epsilon",
    "sinkhorn_iterations",
    "queue_length",
    "epoch_queue_starts",
    "batch_size",
    "world_size",
    "freeze_prototypes_niters",
    "warmup_epochs",
    "start_warmup",
    "seed",
    "use_fp16",
    "amp_dtype",
    "small_images",
    "teacher_arch",
    "mse_weight",
    "teacher_normalize",
    "teacher_hidden_mlp",
    "base_lr",
    "final_lr",
    "wd",
    "distill",
)
RUN_OUTPUTS = ("checkpoint.pth.tar", "checkpoints", "metrics.csv", "tb")


def run_swav(args: argparse.Namespace, distill: bool = False) -> SwAVModel:
    """Train; returns the (unwrapped) SwAV model. The worker of
    selfsup.engine.runtime.launch_in_place."""
    with rs.owned_run(args.dump_path, "--dump_path"):
        return _swav(args, distill)


def prepare_dump(args: argparse.Namespace, outputs: Iterable[str]) -> None:
    """Rank 0: stale temporaries out; with --restart false (or nothing to
    restart from) a previous run's files move to previous-N."""
    path = os.path.join(args.dump_path, "checkpoint.pth.tar")
    outputs = list(outputs)

    def on_main():
        rs.check_run_folder(
            args.dump_path,
            "--dump_path",
            lambda name: name in outputs or is_queue_file(name),
            foreign_output,
            {"--pretrained/--teacher": getattr(args, "teacher", None) if getattr(args, "distill", False) else None},
            "SwAV run",
        )
        ck.remove_stale_temporaries(args.dump_path)
        if not (getattr(args, "restart", True) and os.path.isfile(path)):
            queues = [n for n in os.listdir(args.dump_path) if is_queue_file(n)]
            rs.archive_previous_run(args.dump_path, outputs + queues, "--dump_path")

    rs.on_rank0(on_main)


def is_queue_file(name: str) -> bool:
    return name.startswith("queue") and name.endswith(".pth")


def foreign_output(name: str) -> str | None:
    """Whose file a top-level name of --dump_path is, when not a SwAV run's."""
    if name.startswith("checkpoint_") and ck.checkpoint_progress(name) is not None:
        return "a MoCo-family pretraining run's"
    return "a linear evaluation's" if name == "model_best.pth.tar" else None


def build_model(args: argparse.Namespace, prec: Precision) -> nn.Module:
    """The student SwAVModel on args.device (SyncBatchNorm across GPUs, as the original)."""
    model = SwAVModel(
        args.arch,
        hidden_mlp=args.hidden_mlp,
        feat_dim=args.feat_dim,
        nmb_prototypes=args.nmb_prototypes,
        small_images=args.small_images,
    )
    if args.sync_bn != "none" and args.distributed and args.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return prec.model(model.to(args.device))


def restore_queue(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> torch.Tensor | None:
    """This rank's queue from the restart checkpoint (always in step with it)
    or, for files of the official layout, queue{rank}.pth; None without one."""
    if ckpt is not None and ckpt.get("queues") is not None:
        where = os.path.join(args.dump_path, "checkpoint.pth.tar")
        queues = ckpt["queues"]
        if not isinstance(queues, list) or len(queues) != args.world_size:
            n = len(queues) if isinstance(queues, list) else None
            raise UserError(
                f"'{where}': its 'queues' entry is "
                + (f"of a {n}-process run; this run has {args.world_size}" if n else "not a list of per-rank queues")
                + ": resume it with the processes it was written by, or use another --dump_path"
            )
        return _checked_queue(queues[args.rank], args, f"'{where}' (the queue of rank {args.rank})")
    if os.path.isfile(queue_path(args)):
        saved = ck.load_file(queue_path(args), "queue file")
        queue = saved.get("queue") if isinstance(saved, dict) else None
        if queue is None:
            raise UserError(f"queue file '{queue_path(args)}' holds no 'queue' tensor (expected {{'queue': tensor}})")
        return _checked_queue(queue, args, f"queue file '{queue_path(args)}'")
    return None


def _checked_queue(queue: Any, args: argparse.Namespace, what: str) -> torch.Tensor | None:
    """A saved queue, if it has the shape this run keeps: (crops assigned,
    queue length / processes, feature width), finite."""
    if queue is None:
        return None
    shape = (len(args.crops_for_assign), args.queue_length // args.world_size, args.feat_dim)
    if not torch.is_tensor(queue) or tuple(queue.shape) != shape or not queue.is_floating_point():
        got = tuple(queue.shape) if torch.is_tensor(queue) else type(queue).__name__
        raise UserError(
            f"{what} is {got}, not a queue of shape {shape} (--crops_for_assign, --queue_length, --feat_dim): "
            "use the flags of the run that wrote it, or another --dump_path"
        )
    if not torch.isfinite(queue).all():
        raise UserError(f"{what} holds non-finite values: use another --dump_path")
    return queue.to(args.device)


def _swav(args, distill):
    seed_everything(args.seed + args.rank)
    args.distill = bool(distill)
    prepare_dump(args, RUN_OUTPUTS)
    os.makedirs(os.path.join(args.dump_path, "checkpoints"), exist_ok=True)
    du.barrier()

    dataset = D.image_folder(
        args.data_path,
        MultiCropTransform(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops),
        what="--data_path",
    )
    loader = train_loader(dataset, args)
    _log(
        f"=> {len(dataset)} images in '{args.data_path}', {len(loader)} iterations per epoch, "
        f"{args.world_size} process(es) on {args.device}"
    )

    prec = Precision.from_swav_args(args)
    model = build_model(args, prec)
    teacher = None
    if distill:
        teacher = prec.model(load_distill_teacher(args).to(args.device))
        _log(
            f"=> frozen teacher {args.teacher_arch} from '{args.teacher}' "
            f"({'normalised' if args.teacher_normalize else 'raw'} embedding)"
        )
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if args.device.type == "cuda" else None
        )
    method = build_swav(args, model, teacher)
    optimizer = LARS(torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd))
    _log(
        f"=> {args.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"precision {prec.dtype or torch.float32}"
    )
    schedule = lr_schedule(args, len(loader))

    identity = rs.run_identity(args, RUN_KEYS, ("teacher",))
    start_epoch, ckpt = restart_from_checkpoint(args, model, optimizer, prec, identity)
    args.queue_length -= args.queue_length % (args.batch_size * args.world_size)
    method.queue = restore_queue(args, ckpt)
    if method.queue is not None:
        _log(f"=> restored the queue from '{queue_path(args)}'")
    mid = mid_epoch_state(ckpt, os.path.join(args.dump_path, "checkpoint.pth.tar")) if ckpt is not None else None
    if mid is not None:
        mid["use_the_queue"] = ckpt.get("use_the_queue", False)
    last = os.path.join(args.dump_path, "checkpoint.pth.tar")

    writer = CheckpointWriter(
        model,
        optimizer,
        args.arch,
        prec,
        weights=lambda: official_state_dict(model),
        small_images=bool(args.small_images),
        hidden_mlp=args.hidden_mlp,
        feat_dim=args.feat_dim,
        nmb_prototypes=args.nmb_prototypes,
        size_crops=args.size_crops,
        run=identity,
    )

    def queues():
        """Every rank's feature queue, for the checkpoint (a collective)."""
        gathered = rs.gather_objects(method.queue.cpu() if method.queue is not None else None)
        return {"queues": gathered} if any(q is not None for q in gathered) else {}

    def save_queue():  # the official layout's file too (the checkpoint's copy is what restarts)
        if method.queue is not None:
            ck.save_checkpoint({"queue": method.queue}, queue_path(args))

    def save_mid(epoch, i):
        writer.save_mid_epoch(last, epoch, loader, i, use_the_queue=bool(method.use_the_queue), **queues())
        save_queue()
        return last

    loader.hook = rs.boundary_hook(save_mid, args.save_freq, args.device)
    metrics = MetricsWriter(args.dump_path, start_epoch) if du.is_main_process() else None
    for epoch in range(start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        method.use_the_queue = False
        if mid is not None:  # continue a mid-epoch checkpoint exactly
            continue_mid_epoch(loader, mid)
            method.use_the_queue, mid = bool(mid["use_the_queue"]), None
        else:
            seed_everything(args.seed + 1000 * epoch + args.rank)
        if args.queue_length > 0 and epoch >= args.epoch_queue_starts and method.queue is None:
            method.queue = torch.zeros(
                len(args.crops_for_assign), args.queue_length // args.world_size, args.feat_dim, device=args.device
            )
        stats = train_one_epoch(loader, method, optimizer, prec, epoch, schedule, args)
        extra = queues()
        if du.is_main_process():
            metrics.write(epoch, **stats)  # first: a kill between the two redoes this epoch's row
            writer.save(last, epoch + 1, **extra)
            if epoch % args.checkpoint_freq == 0 or epoch == args.epochs - 1:
                ck.copy_file(last, os.path.join(args.dump_path, "checkpoints", f"ckp-{epoch}.pth"))
        save_queue()
        if epoch < args.epochs - 1 and rs.any_rank(rs.stop_signal() is not None, args.device):
            rs.announce_stop(last, epoch)
    if metrics is not None:
        metrics.close()
        _log(f"=> done: {os.path.join(args.dump_path, 'checkpoint.pth.tar')}")
    return unwrap(model)


def restart_from_checkpoint(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: LARS,
    prec: Precision,
    identity: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """(epoch to start at, the checkpoint or None) from --dump_path's checkpoint.pth.tar."""
    path = os.path.join(args.dump_path, "checkpoint.pth.tar")
    # rank 0's file: the only rank that writes it
    ckpt = rs.on_rank0(lambda: ck.load_file(path, "restart checkpoint") if os.path.isfile(path) else None)
    if ckpt is None:
        _log(f"=> no checkpoint in '{args.dump_path}': starting from scratch")
        return 0, None
    if ckpt.get("arch") not in (None, args.arch):
        raise UserError(
            f"'{path}' holds arch '{ckpt.get('arch')}', not --arch {args.arch}: use another --dump_path or delete it"
        )
    if identity is not None:
        rs.check_identity(
            ckpt.get("run"), identity, path, "use another --dump_path, or --restart false to start from scratch"
        )
    state = ck.strip_prefix(ck.state_dict_of(ckpt, path), "module.")
    load_official_state(unwrap(model), state, path, "restart checkpoint")
    optimizer.load_state_dict(ckpt["optimizer"])
    prec.load_state_dict(ckpt.get("scaler"))
    epoch = int(ckpt["epoch"])
    where = f" iteration {ckpt['iteration']}" if ckpt.get("iteration") is not None else ""
    _log(f"=> restarting from '{path}' at epoch {epoch}{where} (--restart false starts from scratch)")
    return epoch, ckpt


def train_one_epoch(
    loader: D.ResumableLoader,
    method: SwAV,
    optimizer: LARS,
    prec: Precision,
    epoch: int,
    schedule: np.ndarray,
    args: argparse.Namespace,
) -> dict:
    """One epoch; the metrics.csv row (loss, lr, queue in use, time, rate, the method's loss parts)."""
    meters = EpochMeters(len(loader), f"Epoch: [{epoch}]", args.print_freq, topk=(), part_names=PART_NAMES)
    method.train()
    lr, n = schedule[0], 0
    for it, (crops, _) in enumerate(loader, getattr(loader, "start", 0)):  # it: the batch's index in the epoch
        meters.data_loaded()
        iteration = epoch * len(loader) + it
        lr = float(schedule[iteration])
        for g in optimizer.param_groups:
            g["lr"] = lr
        crops = [prec.inputs(c.to(args.device, non_blocking=True)) for c in crops]
        n = crops[0].shape[0]
        with prec.autocast():  # the forward passes; the method computes codes and losses in fp32
            out = method(crops)
        rs.check_finite(out["loss"], epoch, it, "lower --base_lr", args.dump_path, args.device)
        optimizer.zero_grad(set_to_none=True)
        frozen = iteration < args.freeze_prototypes_niters
        prec.backward_step(out["loss"], optimizer, before_step=method.drop_prototype_gradients if frozen else None)
        meters.update(out, n)
        meters.show("Lr", lr)
        meters.batch_done(it)
    row = meters.summary()
    seconds, images = row["epoch_time"], len(loader) * n * args.world_size
    stats = {
        "loss": row["loss"],
        "lr": lr,
        "queue": int(method.use_the_queue),
        "epoch_time": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
    }
    stats.update({key: value for key, value in row.items() if key in PART_NAMES})
    return stats
