"""SwAV pretraining and SwAV + DisCo distillation (swav-master/main_swav.py,
main_swav_distill.py): flags with the original's names and defaults, and the
training loop (multi-crop, Sinkhorn codes, feature queue, frozen prototypes,
LARS, warmup + cosine per iteration, checkpoints and automatic restart)."""
import argparse
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn

from selfsup.core import checkpoint as ck
from selfsup.data import folders as D
from selfsup.core import distributed as du
from selfsup.engine import runstate as rs
from selfsup.core.errors import UserError
from selfsup.engine.lars import LARS
from selfsup.data.multicrop import MultiCropTransform, check_multicrop_args
from selfsup.engine.runstate import seed_everything
from selfsup.core.distributed import unwrap
from selfsup.engine.progress import AverageMeter, MetricsWriter, ProgressMeter
from selfsup.models.swav import SwAVModel, load_official_state, load_swav_teacher, official_state_dict, swav_disco_loss, swav_loss
from selfsup.engine import swav_launch
from selfsup.engine.swav_launch import add_dist_args, autocast_dtype, bool_flag, finish_distributed, init_distributed


def build_parser(description, distill=False):
    p = argparse.ArgumentParser(description=description)
    a = p.add_argument
    # data and multi-crop
    a("--data_path", type=str, default="/path/to/imagenet", help="ImageFolder of training images (class sub-folders)")
    a("--nmb_crops", type=int, default=[2], nargs="+", help="number of crops of each resolution")
    a("--size_crops", type=int, default=[224], nargs="+", help="crop size of each resolution")
    a("--min_scale_crops", type=float, default=[0.14], nargs="+", help="RandomResizedCrop scale minimum")
    a("--max_scale_crops", type=float, default=[1], nargs="+", help="RandomResizedCrop scale maximum")
    # SwAV
    a("--crops_for_assign", type=int, nargs="+", default=[0, 1], help="crops whose codes are predicted")
    a("--temperature", default=0.1, type=float)
    a("--epsilon", default=0.05, type=float, help="Sinkhorn regularisation")
    a("--sinkhorn_iterations", default=3, type=int)
    a("--feat_dim", default=128, type=int, help="embedding width")
    a("--nmb_prototypes", default=3000, type=int)
    a("--queue_length", type=int, default=0, help="length of the feature queue (0: none)")
    a("--epoch_queue_starts", type=int, default=15, help="epoch from which the queue is used")
    # optimisation
    a("--epochs", default=100, type=int)
    a("--batch_size", default=64, type=int, help="images per process")
    a("--base_lr", default=4.8, type=float)
    a("--final_lr", type=float, default=0)
    a("--freeze_prototypes_niters", default=313, type=int, help="iterations with frozen prototypes")
    a("--wd", default=1e-6, type=float)
    a("--warmup_epochs", default=10, type=int)
    a("--start_warmup", default=0, type=float)
    # model and run
    a("--arch", default="resnet50", type=str)
    a("--hidden_mlp", default=2048, type=int, help="projection head hidden width (0: linear head)")
    a("--workers", default=10, type=int)
    a("--checkpoint_freq", type=int, default=25, help="keep checkpoints/ckp-{epoch}.pth every N epochs")
    a("--use_fp16", type=bool_flag, default=True, help="mixed precision (torch autocast; see --amp_dtype)")
    a("--sync_bn", type=str, default="pytorch", help="pytorch: SyncBatchNorm across GPUs; apex: same as pytorch")
    a("--syncbn_process_group_size", type=int, default=8, help="accepted; SyncBatchNorm spans all ranks here")
    a("--dump_path", type=str, default=".", help="checkpoints, queue, metrics.csv")
    a("--restart", type=bool_flag, default=True,
      help="ours: continue the run in --dump_path (default, as the original); false starts from scratch "
           "and moves that run's files to --dump_path/previous-N")
    a("--save_freq", type=int, default=0,
      help="ours: also checkpoint every N iterations within an epoch (docs/resume.md)")
    a("--seed", type=int, default=31)
    add_dist_args(p)
    # ours
    a("--small_images", type=bool_flag, default=False, help="ours: 3x3 stride-1 stem for 16-64 px crops")
    a("--amp_dtype", default="auto", choices=["auto", "bfloat16", "float16"],
      help="ours: autocast dtype of --use_fp16 true (auto: bf16 where the GPU has it, fp16 otherwise, fp32 on CPU)")
    a("--print_freq", type=int, default=50, help="ours: iterations between progress lines")
    a("--channels_last", type=bool_flag, default=True, help="ours: channels-last memory format on GPUs")
    a("--precision", default=None, choices=["fp32", "bf16", "fp16"],
      help="ours, the MoCo scripts' flag: fp32 = --use_fp16 false; bf16/fp16 = --use_fp16 true with "
           "--amp_dtype bfloat16/float16 (bf16 falls back to fp16 on GPUs without it)")
    if distill:
        a("--pretrained", default="", type=str, help="teacher checkpoint (official SwAV layout or ours)")
        a("--teacher", default="", type=str, help="same as --pretrained")
        a("--teacher_arch", default="resnet50", type=str, help="ours: teacher architecture")
        a("--teacher_hidden_mlp", default=None, type=int, help="ours: default read from the checkpoint")
        a("--mse_weight", default=1.0, type=float,
          help="ours: weight of the MSE term, which the original adds to the summed SwAV loss before dividing "
               "by len(--crops_for_assign): loss = swav + mse_weight * MSE / len(crops_for_assign) (original: 1)")
        a("--teacher_normalize", default=False, type=bool_flag,
          help="ours: L2-normalise the teacher's embedding (original: false, the MSE pulls the normalised "
               "student toward the raw teacher projection)")
    return p


def finish_args(args, distill=False):
    if getattr(args, "precision", None):
        args.use_fp16 = args.precision != "fp32"
        if args.use_fp16:
            args.amp_dtype = {"bf16": "bfloat16", "fp16": "float16"}[args.precision]
    check_multicrop_args(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops)
    n = sum(args.nmb_crops)
    if not args.crops_for_assign or any(not 0 <= c < n for c in args.crops_for_assign):
        raise UserError(f"--crops_for_assign {args.crops_for_assign}: expected crop indices below {n}")
    if args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected a positive number")
    if args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: nothing to train")
    if args.nmb_prototypes < 1 or args.feat_dim < 1:
        raise UserError("--nmb_prototypes and --feat_dim must be positive")
    if args.sync_bn not in ("pytorch", "apex", "none"):
        raise UserError(f"--sync_bn {args.sync_bn}: expected pytorch, apex or none")
    swav_launch.check_args(args)  # every range, launch settings, --dump_path (selfsup.engine.swav_launch)
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    if distill:
        if args.pretrained and args.teacher and args.pretrained != args.teacher:
            raise UserError("--pretrained and --teacher name different teachers: give one")
        args.teacher = args.teacher or args.pretrained
        if not args.teacher:
            raise UserError("main_swav_distill.py needs the teacher checkpoint: --pretrained PATH (or --teacher)")
    return args


def lr_schedule(args, iters_per_epoch):
    """Per-iteration lr: linear warmup from start_warmup, then cosine to final_lr."""
    warmup = np.linspace(args.start_warmup, args.base_lr, iters_per_epoch * args.warmup_epochs)
    rest = np.arange(iters_per_epoch * (args.epochs - args.warmup_epochs))
    cosine = args.final_lr + 0.5 * (args.base_lr - args.final_lr) * (1 + np.cos(math.pi * rest / max(len(rest), 1)))
    return np.concatenate((warmup, cosine))


def queue_path(args):
    return os.path.join(args.dump_path, f"queue{args.rank}.pth")


def _log(msg):
    if du.is_main_process():
        print(msg, flush=True)


# Flags that define a SwAV run (the checkpoint's "run", compared on restart).
RUN_KEYS = ("arch", "hidden_mlp", "feat_dim", "nmb_prototypes", "size_crops", "nmb_crops", "min_scale_crops",
            "max_scale_crops", "crops_for_assign", "temperature", "epsilon", "sinkhorn_iterations", "queue_length",
            "epoch_queue_starts", "batch_size", "world_size", "freeze_prototypes_niters", "warmup_epochs",
            "start_warmup", "seed", "use_fp16", "amp_dtype", "small_images", "teacher_arch", "mse_weight",
            "teacher_normalize", "teacher_hidden_mlp", "base_lr", "final_lr", "wd", "distill")
RUN_OUTPUTS = ("checkpoint.pth.tar", "checkpoints", "metrics.csv", "tb")


def run_swav(args, distill=False):
    """Train; returns the (unwrapped) SwAV model. Call within init_distributed."""
    with rs.owned_run(args.dump_path, "--dump_path"):
        return _swav(args, distill)


def prepare_dump(args, outputs):
    """Rank 0: stale temporaries out; with --restart false (or nothing to
    restart from) a previous run's files move to previous-N."""
    path = os.path.join(args.dump_path, "checkpoint.pth.tar")
    if du.is_main_process():
        ck.remove_stale_temporaries(args.dump_path)
        if not (getattr(args, "restart", True) and os.path.isfile(path)):
            queues = [n for n in os.listdir(args.dump_path) if n.startswith("queue") and n.endswith(".pth")]
            rs.archive_previous_run(args.dump_path, list(outputs) + queues, "--dump_path")
    du.barrier()


def _swav(args, distill):
    seed_everything(args.seed + args.rank)
    args.distill = bool(distill)
    prepare_dump(args, RUN_OUTPUTS)
    os.makedirs(os.path.join(args.dump_path, "checkpoints"), exist_ok=True)
    du.barrier()

    dataset = D.image_folder(args.data_path, MultiCropTransform(
        args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops), what="--data_path")
    loader = D.make_loader(dataset, args.batch_size, args.workers, shuffle=True, drop_last=True,
                           distributed=args.distributed, seed=args.seed)
    _log(f"=> {len(dataset)} images in '{args.data_path}', {len(loader)} iterations per epoch, "
         f"{args.world_size} process(es) on {args.device}")

    model = SwAVModel(args.arch, hidden_mlp=args.hidden_mlp, feat_dim=args.feat_dim,
                      nmb_prototypes=args.nmb_prototypes, small_images=args.small_images)
    if args.sync_bn != "none" and args.distributed and args.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(args.device)
    channels_last = args.channels_last and args.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = None
    if distill:
        teacher = load_distill_teacher(args).to(args.device)
        if channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        _log(f"=> frozen teacher {args.teacher_arch} from '{args.teacher}' "
             f"({'normalised' if args.teacher_normalize else 'raw'} embedding)")
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if args.device.type == "cuda" else None)
    optimizer = LARS(torch.optim.SGD(model.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=args.wd))
    amp_dtype = autocast_dtype(args)
    scaler = torch.amp.GradScaler(args.device.type, enabled=amp_dtype == torch.float16)
    _log(f"=> {args.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
         f"precision {amp_dtype or torch.float32}")
    schedule = lr_schedule(args, len(loader))

    identity = rs.run_identity(args, RUN_KEYS, ("teacher",))
    start_epoch, ckpt = restart_from_checkpoint(args, model, optimizer, scaler, identity)
    queue, mid, live = None, None, {"queue": None, "use_the_queue": False}
    if ckpt is not None and ckpt.get("queues") is not None:  # saved with the checkpoint: always in step with it
        queue = ckpt["queues"][args.rank]
        queue = queue.to(args.device) if queue is not None else None
    elif os.path.isfile(queue_path(args)):
        queue = ck.load_file(queue_path(args), "queue file")["queue"].to(args.device)
    if queue is not None:
        _log(f"=> restored the queue from '{queue_path(args)}'")
    if ckpt is not None and ckpt.get("iteration") is not None:
        mid = {k: ckpt[k] for k in ("sampler", "rng", "use_the_queue")}
    args.queue_length -= args.queue_length % (args.batch_size * args.world_size)
    last = os.path.join(args.dump_path, "checkpoint.pth.tar")

    def state(epoch, **extra):
        queues = rs.gather_objects(live["queue"].cpu() if live["queue"] is not None else None)
        st = {"epoch": epoch, "state_dict": official_state_dict(model), "optimizer": optimizer.state_dict(),
              "arch": args.arch, "small_images": bool(args.small_images), "hidden_mlp": args.hidden_mlp,
              "feat_dim": args.feat_dim, "nmb_prototypes": args.nmb_prototypes, "size_crops": args.size_crops,
              "run": identity, **({"queues": queues} if any(q is not None for q in queues) else {}), **extra}
        if scaler.is_enabled():
            st["scaler"] = scaler.state_dict()
        return st

    def save_mid(epoch, i):
        st = state(epoch, iteration=i, sampler=loader.position(i), rng=rs.gather_objects(rs.capture_rng()),
                   use_the_queue=bool(live["use_the_queue"]))
        if du.is_main_process():
            ck.save_checkpoint(st, last)
        if live["queue"] is not None:
            ck.save_checkpoint({"queue": live["queue"]}, queue_path(args))
        return last

    loader.hook = rs.boundary_hook(save_mid, args.save_freq, args.device)
    metrics = MetricsWriter(args.dump_path, start_epoch) if du.is_main_process() else None
    for epoch in range(start_epoch, args.epochs):
        loader.sampler.set_epoch(epoch)
        use_the_queue = False
        if mid is not None:  # continue a mid-epoch checkpoint exactly
            loader.resume_at(mid["sampler"])
            rs.restore_rng(mid["rng"][args.rank])
            use_the_queue, mid = bool(mid["use_the_queue"]), None
        else:
            seed_everything(args.seed + 1000 * epoch + args.rank)
        if args.queue_length > 0 and epoch >= args.epoch_queue_starts and queue is None:
            queue = torch.zeros(len(args.crops_for_assign), args.queue_length // args.world_size, args.feat_dim,
                                device=args.device)
        live["queue"] = queue
        stats, queue = train_one_epoch(loader, model, optimizer, scaler, epoch, schedule, queue, args,
                                       amp_dtype, teacher, channels_last, use_the_queue, live)
        live["queue"] = queue
        st = state(epoch + 1)
        if du.is_main_process():
            metrics.write(epoch, **stats)  # first: a kill between the two redoes this epoch's row
            ck.save_checkpoint(st, last)
            if epoch % args.checkpoint_freq == 0 or epoch == args.epochs - 1:
                shutil.copyfile(last, os.path.join(args.dump_path, "checkpoints", f"ckp-{epoch}.pth"))
        if queue is not None:  # the official layout's file too (the checkpoint's copy is what restarts)
            ck.save_checkpoint({"queue": queue}, queue_path(args))
        if epoch < args.epochs - 1 and rs.any_rank(rs.stop_signal() is not None, args.device):
            rs.announce_stop(last, epoch)
    if metrics is not None:
        metrics.close()
        _log(f"=> done: {os.path.join(args.dump_path, 'checkpoint.pth.tar')}")
    return unwrap(model)


def load_distill_teacher(args):
    """The frozen teacher of main_swav_distill.py. The original builds it
    without normalize=True (orig:swav-master/main_swav_distill.py:203-206,
    default False in src/resnet50.py:150): its raw projection is the target."""
    teacher = load_swav_teacher(args.teacher_arch, args.teacher, hidden_mlp=args.teacher_hidden_mlp,
                                feat_dim=args.feat_dim)
    return teacher.set_normalize(args.teacher_normalize)


def batch_loss(model, teacher, crops, queue, use_the_queue, args, amp_dtype=None):
    """Loss of one multi-crop batch: SwAV, plus the DisCo MSE to the teacher's
    embedding of every crop when `teacher` is given (see swav_disco_loss).
    Returns (loss, swav, mse or None, use_the_queue). Only the forward passes
    run under autocast (`amp_dtype`); the losses and queue scores in fp32."""
    net = unwrap(model)
    bs = crops[0].shape[0]
    with torch.autocast(crops[0].device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        embedding, scores = model(crops)
        t_embedding = teacher(crops) if teacher is not None else None
    swav, use_the_queue = swav_loss(
        embedding, scores, bs, args.crops_for_assign, args.temperature, args.epsilon, args.sinkhorn_iterations,
        queue=queue, prototypes=net.prototypes.weight, use_the_queue=use_the_queue)
    if teacher is None:
        return swav, swav, None, use_the_queue
    loss, mse = swav_disco_loss(swav, embedding, t_embedding, len(args.crops_for_assign), args.mse_weight)
    return loss, swav, mse, use_the_queue


def restart_from_checkpoint(args, model, optimizer, scaler, identity=None):
    """(epoch to start at, the checkpoint or None) from --dump_path's checkpoint.pth.tar."""
    path = os.path.join(args.dump_path, "checkpoint.pth.tar")
    if not os.path.isfile(path):
        _log(f"=> no checkpoint in '{args.dump_path}': starting from scratch")
        return 0, None
    ckpt = ck.load_file(path, "restart checkpoint")
    if ckpt.get("arch") not in (None, args.arch):
        raise UserError(f"'{path}' holds arch '{ckpt.get('arch')}', not --arch {args.arch}: "
                        "use another --dump_path or delete it")
    if identity is not None:
        rs.check_identity(ckpt.get("run"), identity, path,
                          "use another --dump_path, or --restart false to start from scratch")
    state = ck.strip_prefix(ck.state_dict_of(ckpt, path), "module.")
    load_official_state(unwrap(model), state, path, "restart checkpoint")
    optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    epoch = int(ckpt["epoch"])
    where = f" iteration {ckpt['iteration']}" if ckpt.get("iteration") is not None else ""
    _log(f"=> restarting from '{path}' at epoch {epoch}{where} (--restart false starts from scratch)")
    return epoch, ckpt


def train_one_epoch(loader, model, optimizer, scaler, epoch, schedule, queue, args, amp_dtype, teacher,
                    channels_last, use_the_queue=False, live=None):
    batch_time, data_time = AverageMeter("Time", ":6.3f"), AverageMeter("Data", ":6.3f")
    losses = AverageMeter("Loss", ":.4e")
    swav_meter, mse_meter = AverageMeter("SwAV", ":.4e"), AverageMeter("MSE", ":.4e")
    meters = [batch_time, data_time, losses] + ([swav_meter, mse_meter] if teacher is not None else [])
    progress = ProgressMeter(len(loader), meters, prefix=f"Epoch: [{epoch}]")
    net = unwrap(model)
    model.train()
    live = {} if live is None else live  # what a mid-epoch checkpoint reads at the next boundary
    start = end = time.time()
    lr = schedule[0]
    for it, (crops, _) in enumerate(loader, getattr(loader, "start", 0)):  # it: the batch's index in the epoch
        data_time.update(time.time() - end)
        iteration = epoch * len(loader) + it
        lr = float(schedule[iteration])
        for g in optimizer.param_groups:
            g["lr"] = lr
        net.normalize_prototypes()

        crops = [c.to(args.device, non_blocking=True) for c in crops]
        if channels_last:
            crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
        bs = crops[0].shape[0]
        loss, swav_value, mse, use_the_queue = batch_loss(model, teacher, crops, queue, use_the_queue, args,
                                                          amp_dtype)
        if mse is not None:
            swav_meter.update(swav_value.item(), bs)
            mse_meter.update(mse.item(), bs)
        live["use_the_queue"] = use_the_queue
        rs.check_finite(loss, epoch, it, "lower --base_lr", args.dump_path, args.device)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if iteration < args.freeze_prototypes_niters:
            for name, p in model.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        if scaler.is_enabled():
            scaler.unscale_(optimizer.optim)
            optimizer.adapt_gradients()
            saved = [g["weight_decay"] for g in optimizer.param_groups]
            for g in optimizer.param_groups:
                g["weight_decay"] = 0.0
            scaler.step(optimizer.optim)
            for g, wd in zip(optimizer.param_groups, saved):
                g["weight_decay"] = wd
            scaler.update()
        else:
            optimizer.step()

        losses.update(loss.item(), bs)
        batch_time.update(time.time() - end)
        end = time.time()
        if du.is_main_process() and (it % args.print_freq == 0 or it == len(loader) - 1):
            progress.meters = meters + [AverageMeter("Lr", ":.4f")]
            progress.meters[-1].update(lr)
            progress.display(it)
    seconds = time.time() - start
    images = len(loader) * bs * args.world_size
    stats = {"loss": losses.avg, "lr": lr, "queue": int(use_the_queue), "epoch_time": seconds,
             "images_per_s": images / seconds if seconds > 0 else 0.0}
    if teacher is not None:
        stats.update(loss_swav=swav_meter.avg, loss_mse=mse_meter.avg)
    return stats, queue


def swav_script(distill):
    """(parse_args, main) of main_swav.py / main_swav_distill.py, which differ
    only in whether a teacher is distilled."""
    from selfsup.core.errors import cli_main

    def parse_args(argv=None):
        p = build_parser("SwAV + DisCo distillation" if distill else "SwAV pretraining", distill=distill)
        return finish_args(p.parse_args(argv), distill=distill)

    @cli_main
    def main(argv=None):
        args = init_distributed(parse_args(argv))
        try:
            return run_swav(args, distill=distill)
        finally:
            finish_distributed(args)

    return parse_args, main
