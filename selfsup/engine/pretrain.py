"""The pretraining loop shared by MoCo-v2, DisCo and MoCo+RKD.

A method is a module whose ``forward(im_q, im_k)`` returns a dict with
``loss`` (what is optimised), ``logits``/``labels`` (for the contrastive
accuracy) and optionally more ``loss_*`` terms to log. Everything else
(processes, data, optimiser, schedule, checkpoints, resume, logs) is here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.core.distributed import unwrap
from selfsup.core.errors import UserError
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.data.gpu_augment import moco_spec
from selfsup.data.jpeg import TwoViewLoader, two_view_loader
from selfsup.engine import collapse
from selfsup.engine import runstate as rs
from selfsup.engine.checkpointing import CheckpointWriter, continue_mid_epoch, mid_epoch_state
from selfsup.engine.loaders import train_loader
from selfsup.engine.optim import epoch_lr, set_lr
from selfsup.engine.precision import Precision
from selfsup.engine.progress import EpochMeters, MetricsWriter
from selfsup.engine.runstate import seed_everything
from selfsup.models import health
from selfsup.models.backbones import small_bn_group_warning


def resume_path(args: argparse.Namespace) -> str | None:
    if getattr(args, "resume_ckpt", False):
        path = ck.latest_checkpoint(args.ckpt_dir)
        if path is None and du.is_main_process():
            print(f"=> --resume-ckpt: no checkpoint in '{args.ckpt_dir}', starting from scratch", flush=True)
        return path
    if args.resume is None:  # moco/main_moco.py's default: the run's own folder, as the original's ./ckpt
        path = ck.latest_checkpoint(args.ckpt_dir)
        if du.is_main_process():
            print(
                f"=> resuming from the newest checkpoint in '{args.ckpt_dir}' (--resume '' starts from scratch)"
                if path
                else f"=> no checkpoint found at '{args.ckpt_dir}': starting from scratch",
                flush=True,
            )
        return path
    if args.resume and os.path.isdir(args.resume):
        path = ck.latest_checkpoint(args.resume)
        if path is None:
            raise UserError(f"--resume '{args.resume}' is a folder without checkpoint_NNNN.pth.tar files")
        return path
    return args.resume or None


def pretrain_loader(args: argparse.Namespace) -> D.ResumableLoader | TwoViewLoader:
    """Two-view loader of args.data/train: PIL + torchvision in the workers
    (the original's path), or with --gpu-aug files read by the workers and
    decoded and augmented in batches on args.device (selfsup.data.jpeg)."""
    train_dir = D.split_folder(args.data, "train")
    if getattr(args, "gpu_aug", False):
        return two_view_loader(
            train_dir,
            moco_spec(args.aug_plus, args.image_size, args.crop_min),
            args.batch_size,
            args.workers,
            args.device,
            distributed=args.distributed,
            seed=args.seed,
            decode=getattr(args, "gpu_aug_decode", "gpu"),
        )
    dataset = D.image_folder(
        train_dir,
        augment.TwoCropsTransform(augment.pretrain_transform(args.aug_plus, args.image_size, args.crop_min)),
    )
    return train_loader(dataset, args)


# The flags that define a pretraining run (stored as the checkpoint's "run",
# compared on resume). Not --epochs (a finished run may be extended), nor
# paths, workers or print frequency (they do not change what is computed).
RUN_KEYS = (
    "method",
    "arch",
    "moco_dim",
    "moco_k",
    "moco_m",
    "moco_t",
    "mlp",
    "hidden",
    "aug_plus",
    "crop_min",
    "image_size",
    "small_images",
    "batch_size",
    "world_size",
    "bn_splits",
    "lr",
    "momentum",
    "weight_decay",
    "cos",
    "schedule",
    "gamma",
    "seed",
    "precision",
    "channels_last",
    "gpu_aug",
    "teacher_arch",
    "nmb_prototypes",
    "teacher_bn",
    "mse_reduction",
    "only_mse",
    "use_mse",
    "rkd_dist_weight",
    "rkd_angle_weight",
    "rkd_views",
)
RUN_FILES = ("teacher",)
# What a fresh run moves aside when the folder holds another run's files.
RUN_OUTPUTS = ("metrics.csv", "tb")


def run_identity(args: argparse.Namespace) -> dict:
    return rs.run_identity(args, RUN_KEYS, RUN_FILES)


def resume(writer: CheckpointWriter, path: str, args: argparse.Namespace) -> tuple[int, dict | None]:
    """Load model, queue, optimizer and scaler state (into what `writer`
    saves) after checking that the checkpoint's run had the same flags;
    returns (epoch to start at, the mid-epoch state or None)."""
    ckpt = rs.on_rank0(lambda: ck.load_file(path, "--resume checkpoint"))
    hint = (
        "use another --ckpt-dir, or --resume '' to start from scratch"
        if args.resume is None
        else "resume with the flags of that run, or start from scratch without --resume"
    )
    if ckpt.get("arch") not in (None, args.arch):
        raise UserError(
            f"--resume '{path}' holds arch '{ckpt.get('arch')}', not -a {args.arch}"
            f"{'; ' + hint if args.resume is None else ''}"
        )
    mid = mid_epoch_state(ckpt, path)  # first: another process count is said as such
    identity = run_identity(args)
    if args.resume:  # an explicit --resume may change the schedule (the original allowed it); a rerun may not
        identity = {k: v for k, v in identity.items() if k not in rs.SCHEDULE_KEYS}
    rs.check_identity(ckpt.get("run"), identity, path, hint, rs.moco_flag_name)
    state = ck.strip_prefix(ck.state_dict_of(ckpt, path), "module.")
    ck.load_into(unwrap(writer.model), state, path, args.arch)
    writer.restore(ckpt)
    if du.is_main_process():
        where = f", iteration {mid['iteration']}" if mid else ""
        print(f"=> loaded checkpoint '{path}' (epoch {ckpt['epoch']}{where})", flush=True)
    return int(ckpt["epoch"]), mid


def spread_sample(data: str, image_size: int, n: int = 256) -> torch.Tensor:
    """The images the teacher's spread is measured on: every k-th of n
    training images, under the eval transform."""
    dataset = D.image_folder(D.split_folder(data, "train"), augment.eval_transform(image_size))
    step = max(1, len(dataset) // n)
    return torch.stack([dataset[i][0] for i in range(0, len(dataset), step)][:n])


@torch.no_grad()
def teacher_spread_line(model: nn.Module, args: argparse.Namespace, n: int = 256) -> str:
    """How spread out the frozen teacher's embeddings of `n` training images
    are (spread_sample), in the BN mode it trains in."""
    images = spread_sample(args.data, args.image_size, n).to(args.device)
    model.train()  # DistilledMoCo.train puts the teacher in its --teacher-bn mode
    spread = collapse.embedding_spread(model.embed_teacher, images, batch_size=args.batch_size)
    return collapse.spread_report(spread, images.shape[0])


def in_folder(path: str | None, folder: str) -> bool:
    return bool(path) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder)


def is_output(name: str) -> bool:
    """Whether a top-level name of --ckpt-dir is one a pretraining run writes."""
    return name in RUN_OUTPUTS or (name.startswith("checkpoint_") and ck.checkpoint_progress(name) is not None)


def foreign_output(name: str) -> str | None:
    """Whose file a top-level name of --ckpt-dir is, when not a pretraining run's."""
    return {
        "checkpoint.pth.tar": "a linear evaluation's or SwAV's",
        "model_best.pth.tar": "a linear evaluation's",
        "checkpoints": "a SwAV run's",
    }.get(name)


def prepare_folder(args: argparse.Namespace, path: str | None) -> None:
    """Rank 0: a folder of another kind of run, or a teacher among this
    run's outputs, is refused; stale temporaries out; a run that does not
    continue this folder's checkpoints moves the folder's previous files aside."""

    def on_main():
        inputs = {"--teacher": getattr(args, "teacher", None)}
        rs.check_run_folder(args.ckpt_dir, "--ckpt-dir", is_output, foreign_output, inputs, "pretraining run")
        ck.remove_stale_temporaries(args.ckpt_dir)
        if not in_folder(path, args.ckpt_dir):
            old = [os.path.basename(p) for p in ck.run_checkpoints(args.ckpt_dir)]
            rs.archive_previous_run(args.ckpt_dir, old + list(RUN_OUTPUTS))

    rs.on_rank0(on_main)


def prune(folder: str, keep: str) -> None:
    """Only the newest checkpoint stays, as the original (which deleted the
    previous epoch's); mid-epoch ones are superseded by any later one."""
    for old in ck.run_checkpoints(folder):
        if old != keep and ck.checkpoint_progress(old) < ck.checkpoint_progress(keep):
            os.remove(old)


def run_pretraining(args: argparse.Namespace, build_model: Callable[[argparse.Namespace], nn.Module]) -> nn.Module:
    """Worker body (one per process): train `build_model(args)` on args.data/train."""
    with rs.owned_run(args.ckpt_dir):
        return _pretrain(args, build_model)


def _pretrain(args, build_model):
    if args.seed is not None:
        seed_everything(args.seed + args.rank)
    if args.small_images is None:
        args.small_images = False
    args.method = getattr(build_model, "__name__", type(build_model).__name__)
    main = du.is_main_process()
    if main:
        print(
            f"=> creating model '{args.arch}' on {args.device}"
            f"{f' ({args.world_size} processes)' if args.distributed else ''}",
            flush=True,
        )
    prec = Precision.from_args(args)
    model = prec.model(build_model(args).to(args.device))
    if main and (bn_line := small_bn_group_warning(model, args.batch_size, args.bn_splits, args.world_size)):
        print(bn_line, flush=True)
    if main and (prec.dtype is not None or prec.channels_last or getattr(args, "gpu_aug", False)):
        print(f"=> precision {prec.name}{', GPU data pipeline' if getattr(args, 'gpu_aug', False) else ''}", flush=True)
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[args.gpu] if args.device.type == "cuda" else None,
            find_unused_parameters=getattr(model, "find_unused_parameters", False),
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    writer = CheckpointWriter(
        model,
        optimizer,
        args.arch,
        prec,
        small_images=bool(args.small_images),
        image_size=args.image_size,
        run=run_identity(args),
    )

    path = rs.on_rank0(lambda: resume_path(args))
    prepare_folder(args, path)
    mid = None
    if path:
        args.start_epoch, mid = resume(writer, path, args)

    loader = pretrain_loader(args)
    metrics = MetricsWriter(args.ckpt_dir, args.start_epoch) if main else None

    def save_mid(epoch, i):
        name = writer.save_mid_epoch(os.path.join(args.ckpt_dir, ck.checkpoint_name(epoch, i)), epoch, loader, i)
        if main:
            prune(args.ckpt_dir, name)
        return name

    # Once a run, before it trains: the measurement runs the teacher's BN in
    # its training mode, whose batch counters the checkpoint holds.
    if main and hasattr(unwrap(model), "teacher") and args.start_epoch == 0 and mid is None:
        print(teacher_spread_line(unwrap(model), args), flush=True)

    loader.hook = rs.boundary_hook(save_mid, getattr(args, "save_freq", 0), args.device)
    warned_rise = warned_bn = False
    for epoch in range(args.start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        if mid is not None:  # continue a mid-epoch checkpoint exactly: its batch, its RNG states
            continue_mid_epoch(loader, mid)
            mid = None
        elif args.seed is not None:  # per-epoch seeds make a resumed run repeat the same batches
            seed_everything(args.seed + 1000 * epoch + args.rank)
        lr = epoch_lr(args.lr, epoch, args.epochs, args.cos, args.schedule, args.gamma)
        set_lr(optimizer, lr)
        stats = train_one_epoch(loader, model, optimizer, epoch, args, prec)
        warning = collapse.infonce_warning(stats.get("loss_nce", stats["loss"]), args.moco_k, epoch)
        if main and warning:
            print(warning, flush=True)
        name = os.path.join(args.ckpt_dir, ck.checkpoint_name(epoch))
        if main:
            metrics.write(epoch, lr=lr, **stats)  # first: a kill between the two redoes this epoch's row
            rising = collapse.infonce_rise_warning(infonce_history(metrics.rows), args.moco_k)
            if rising and not warned_rise:  # once a run: the curve says the rest
                print(rising, flush=True)
                warned_rise = True
            writer.save(name, epoch + 1)
            prune(args.ckpt_dir, name)
            exploded = health.bn_warning(getattr(unwrap(model), "encoder_q", unwrap(model)), "the query encoder")
            if exploded and not warned_bn:  # once a run, at the first epoch it shows
                print(exploded, flush=True)
                warned_bn = True
        if epoch < args.epochs - 1 and rs.any_rank(rs.stop_signal() is not None, args.device):
            rs.announce_stop(name, epoch)
    if main:
        metrics.close()
        print(f"=> done: {os.path.join(args.ckpt_dir, ck.checkpoint_name(args.epochs - 1))}", flush=True)
    return unwrap(model)


def infonce_history(rows: list[dict]) -> list[float]:
    """The epoch-mean InfoNCE of metrics.csv's rows (DisCo's loss_nce, else loss)."""
    return [float(r.get("loss_nce") or r["loss"]) for r in rows]


def train_one_epoch(
    loader: Iterable,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    args: argparse.Namespace,
    prec: Precision | None = None,
) -> dict[str, float]:
    """One epoch of `model` (a method: forward returns "loss", "logits",
    "labels" and "loss_*" parts); returns its metrics.csv row."""
    meters = EpochMeters(len(loader), f"Epoch: [{epoch}]", args.print_freq)
    prec = prec or Precision()
    model.train()
    for i, (images, _) in enumerate(loader, getattr(loader, "start", 0)):  # i: the batch's index in the epoch
        meters.data_loaded()
        im_q = prec.inputs(images[0].to(args.device, non_blocking=True))
        im_k = prec.inputs(images[1].to(args.device, non_blocking=True))
        with prec.autocast():  # the forward only; the losses inside cast to fp32
            out = model(im_q, im_k)
        loss = out["loss"]
        rs.check_finite(loss, epoch, i, "lower --lr", args.ckpt_dir, args.device)
        optimizer.zero_grad(set_to_none=True)
        prec.backward_step(loss, optimizer)
        meters.update(out, im_q.shape[0])
        meters.batch_done(i)
    stats = meters.summary()
    pairs = len(loader) * loader.batch_size * du.world_size()  # a resumed epoch: all of it
    seconds = stats["epoch_time"]
    return {**stats, "pairs_per_s": pairs / seconds if seconds > 0 else 0.0}
