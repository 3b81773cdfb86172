"""Linear evaluation: a frozen pretrained backbone and a trained linear classifier.

Used by moco/main_lincls.py, DisCo/main_lincls.py, yt_main_lincls.py,
main_lincls_semi.py and cifar_main_lincls.py, which differ only in their
default schedule and in where the images come from (`build_datasets`).

Checkpoint (the original's keys): ``{"epoch", "arch", "state_dict",
"best_acc1", "optimizer"}`` plus ``small_images``, ``image_size``, ``run``
and, with a grad scaler (fp16), ``scaler``.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.core.distributed import unwrap
from selfsup.core.errors import UserError
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.data.cifar import CIFAR
from selfsup.data.subset import balanced_subset
from selfsup.engine import runstate as rs
from selfsup.engine.checkpointing import CheckpointWriter, continue_mid_epoch, mid_epoch_state
from selfsup.engine.loaders import train_val_loaders
from selfsup.engine.optim import epoch_lr, set_lr
from selfsup.engine.precision import Precision
from selfsup.engine.progress import EpochMeters, MetricsWriter
from selfsup.engine.runstate import seed_everything
from selfsup.models.backbones import create_backbone, set_head
from selfsup.models.health import state_problem


def imagefolder_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """(train, val) ImageFolder datasets from args.data/train and args.data/val;
    with ``args.label`` (percent) the train set is a class-balanced subset."""
    train = D.image_folder(D.split_folder(args.data, "train"), augment.linear_train_transform(args.image_size))
    val = D.image_folder(D.split_folder(args.data, "val"), augment.eval_transform(args.image_size))
    if train.classes != val.classes:
        raise UserError(f"'{args.data}/train' and '{args.data}/val' have different class folders")
    if getattr(args, "label", None):
        by_class = {}
        for path, target in train.samples:
            by_class.setdefault(target, []).append(path)
        chosen = balanced_subset(by_class, args.label, seed=args.seed or 0)
        train.samples = [(p, t) for t in sorted(chosen) for p in chosen[t]]
        train.targets = [t for _, t in train.samples]
        train.imgs = train.samples
    return train, val


def cifar_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """(train, test) CIFAR-10/100 from the python archives in args.data, resized
    with bicubic interpolation as the original (orig:DisCo/cifar_main_lincls.py:297-337)."""
    bicubic = augment.T.InterpolationMode.BICUBIC
    train = CIFAR(
        args.data, args.dataset, train=True, transform=augment.linear_train_transform(args.image_size, bicubic)
    )
    test = CIFAR(args.data, args.dataset, train=False, transform=augment.resize_transform(args.image_size, bicubic))
    return train, test


def build_classifier(arch: str, num_classes: int, small_images: bool) -> nn.Module:
    """Backbone with a fresh linear classifier: weight N(0, 0.01), bias 0."""
    model, feat_dim = create_backbone(arch, small_images)
    head = nn.Linear(feat_dim, num_classes)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    return set_head(model, head)


def load_pretrained(model: nn.Module, path: str, arch: str) -> dict[str, torch.Tensor]:
    """Backbone weights of a pretraining checkpoint into `model`; only the
    classifier may be left missing."""
    ckpt = ck.load_file(path, "--pretrained checkpoint")
    state = ck.backbone_state(ck.state_dict_of(ckpt, path), model.head_name)
    head = model.head_name
    expected = {k for k in model.state_dict() if not k.startswith(f"{head}.")}
    problem = ck.describe_mismatch({k: v for k, v in model.state_dict().items() if k in expected}, state)
    if problem:
        raise ck.arch_mismatch("--pretrained", path, "-a", arch, problem, ckpt)
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) == {f"{head}.weight", f"{head}.bias"}, result.missing_keys
    return {k: v.clone() for k, v in state.items()}


def freeze_backbone(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(f"{model.head_name}.")


def sanity_check(model: nn.Module, pretrained_state: dict[str, torch.Tensor], path: str) -> None:
    """The frozen weights must equal the pretrained ones after training."""
    current = model.state_dict()
    for k, v in pretrained_state.items():
        if "num_batches_tracked" in k:
            continue
        if not torch.equal(current[k].cpu(), v.cpu()):
            raise RuntimeError(f"frozen weight {k} changed during linear evaluation of '{path}'")
    print("=> sanity check passed: the backbone is unchanged", flush=True)


# Flags that define a linear evaluation (stored as "run", compared on resume).
RUN_KEYS = (
    "arch",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "gamma",
    "cos",
    "batch_size",
    "world_size",
    "image_size",
    "small_images",
    "seed",
    "precision",
    "channels_last",
    "label",
    "dataset",
)
RUN_OUTPUTS = ("checkpoint.pth.tar", "model_best.pth.tar", "metrics.csv", "tb")


def lincls_resume_path(args: argparse.Namespace) -> str | None:
    """--resume as given; by default (None) --ckpt-dir's checkpoint.pth.tar
    when there is one, so rerunning a command resumes it."""
    if args.resume is not None:
        return args.resume or None
    if args.evaluate:  # -e reads only what --resume/--pretrained name
        return None
    path = os.path.join(args.ckpt_dir, "checkpoint.pth.tar")
    found = os.path.isfile(path)
    if du.is_main_process():
        print(
            f"=> resuming from '{path}' (--resume '' starts from scratch)"
            if found
            else f"=> no checkpoint found at '{args.ckpt_dir}': starting from scratch",
            flush=True,
        )
    return path if found else None


def foreign_output(name: str) -> str | None:
    """Whose file a top-level name of --ckpt-dir is, when not a linear evaluation's."""
    if name.startswith("checkpoint_") and ck.checkpoint_progress(name) is not None:
        return "a pretraining run's"
    return "a SwAV run's" if name == "checkpoints" else None


def prepare_folder(args: argparse.Namespace, resume: str | None) -> None:
    """Rank 0, before the evaluation writes: a folder of another kind of run,
    or a --pretrained among this run's outputs, is refused; stale temporaries
    out; another evaluation's files move aside unless this run continues them."""
    rs.check_run_folder(
        args.ckpt_dir,
        "--ckpt-dir",
        lambda name: name in RUN_OUTPUTS,
        foreign_output,
        {"--pretrained": args.pretrained},
        "linear evaluation",
    )
    ck.remove_stale_temporaries(args.ckpt_dir)
    if not (resume and os.path.dirname(os.path.abspath(resume)) == os.path.abspath(args.ckpt_dir)):
        rs.archive_previous_run(args.ckpt_dir, RUN_OUTPUTS)  # another run's results are not ours


def run_lincls(
    args: argparse.Namespace,
    build_datasets: Callable[[argparse.Namespace], tuple[Dataset, Dataset]] = imagefolder_datasets,
) -> dict[str, float]:
    if args.evaluate:
        return _lincls(args, build_datasets)
    with rs.owned_run(args.ckpt_dir):
        return _lincls(args, build_datasets)


def _lincls(args, build_datasets):
    if args.seed is not None:
        seed_everything(args.seed + args.rank)
    main = du.is_main_process()
    train_set, val_set = build_datasets(args)
    num_classes = len(train_set.classes)
    small = args.small_images
    if small is None:
        small = (
            ck.small_images_of(ck.load_file(args.pretrained, "--pretrained checkpoint")) if args.pretrained else False
        )
    args.small_images = bool(small)
    model = build_classifier(args.arch, num_classes, small)
    pretrained_state = None
    if args.pretrained:
        if main:
            print(f"=> loading pretrained backbone from '{args.pretrained}'", flush=True)
        pretrained_state = load_pretrained(model, args.pretrained, args.arch)
    freeze_backbone(model)
    prec = Precision.from_args(args)
    model = prec.model(model.to(args.device))
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[args.gpu] if args.device.type == "cuda" else None
        )
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(params) == 2, "only the classifier's weight and bias are trained"
    optimizer = torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    criterion = nn.CrossEntropyLoss()
    identity = rs.run_identity(args, RUN_KEYS, ("pretrained",))
    writer = CheckpointWriter(
        model, optimizer, args.arch, prec, small_images=bool(small), image_size=args.image_size, run=identity
    )

    best_acc1, mid = 0.0, None
    resume = rs.on_rank0(lambda: lincls_resume_path(args))
    if not args.evaluate:
        rs.on_rank0(lambda: prepare_folder(args, resume))
    if resume:
        ckpt = rs.on_rank0(lambda: ck.load_file(resume, "--resume checkpoint"))
        mid = mid_epoch_state(ckpt, resume) if not args.evaluate else None
        if not args.evaluate:
            hint = (
                "use another --ckpt-dir, or --resume '' to start from scratch"
                if args.resume is None
                else "resume with the flags of that run, or leave out --resume"
            )
            # An explicit --resume may change the schedule (the original allowed it); a rerun may not.
            checked = (
                identity if args.resume is None else {k: v for k, v in identity.items() if k not in rs.SCHEDULE_KEYS}
            )
            rs.check_identity(ckpt.get("run"), checked, resume, hint, rs.moco_flag_name)
        ck.load_into(unwrap(model), ck.strip_prefix(ck.state_dict_of(ckpt, resume), "module."), resume, args.arch)
        writer.restore(ckpt, optimizer_required=False)
        args.start_epoch, best_acc1 = int(ckpt.get("epoch", 0)), float(ckpt.get("best_acc1", 0.0))
        if main:
            where = f", iteration {ckpt['iteration']}" if mid else ""
            print(f"=> resumed '{resume}' (epoch {args.start_epoch}{where})", flush=True)

    train_loader, val_loader = train_val_loaders(train_set, val_set, args)
    if args.evaluate:
        acc1, acc5, _ = validate(val_loader, model, criterion, args, prec)
        return {"acc1": acc1, "acc5": acc5}

    metrics = MetricsWriter(args.ckpt_dir, args.start_epoch) if main else None
    last = os.path.join(args.ckpt_dir, "checkpoint.pth.tar")

    def save_mid(epoch, i):
        return writer.save_mid_epoch(last, epoch, train_loader, i, best_acc1=best_acc1)

    train_loader.hook = rs.boundary_hook(save_mid, getattr(args, "save_freq", 0), args.device)
    acc1 = acc5 = 0.0
    for epoch in range(args.start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        if mid is not None:  # continue a mid-epoch checkpoint exactly
            continue_mid_epoch(train_loader, mid)
            mid = None
        elif args.seed is not None:  # per-epoch seeds: a run resumed at an epoch repeats its batches
            seed_everything(args.seed + 1000 * epoch + args.rank)
        lr = epoch_lr(args.lr, epoch, args.epochs, getattr(args, "cos", False), args.schedule, args.gamma)
        set_lr(optimizer, lr)
        train = train_one_epoch(train_loader, model, criterion, optimizer, epoch, args, prec)
        acc1, acc5, val_loss = validate(val_loader, model, criterion, args, prec)
        is_best = acc1 > best_acc1
        best_acc1 = max(acc1, best_acc1)
        if main:
            metrics.write(
                epoch,
                lr=lr,
                loss=train["loss"],
                train_acc1=train["acc1"],
                val_loss=val_loss,
                acc1=acc1,
                acc5=acc5,
                best_acc1=best_acc1,
            )
            writer.save(last, epoch + 1, best_acc1=best_acc1)
            if is_best:
                writer.save(os.path.join(args.ckpt_dir, "model_best.pth.tar"), epoch + 1, best_acc1=best_acc1)
            if epoch == args.start_epoch and pretrained_state is not None:
                sanity_check(unwrap(model), pretrained_state, args.pretrained)
        if epoch < args.epochs - 1 and rs.any_rank(rs.stop_signal() is not None, args.device):
            rs.announce_stop(last, epoch)
    if main:
        metrics.close()
        print(f"=> best Acc@1 {best_acc1:.3f}", flush=True)
    return {"acc1": acc1, "acc5": acc5, "best_acc1": best_acc1}


def train_one_epoch(
    loader: D.ResumableLoader,
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    args: argparse.Namespace,
    prec: Precision | None = None,
) -> dict[str, float]:
    """One epoch of the classifier; returns the epoch's meters summary
    ({"loss", "acc1", "acc5", "epoch_time"})."""
    meters = EpochMeters(len(loader), f"Epoch: [{epoch}]", args.print_freq)
    # eval(): BatchNorm keeps the pretrained statistics while the classifier trains.
    prec = prec or Precision()
    model.eval()
    for i, (images, target) in enumerate(loader, getattr(loader, "start", 0)):  # i: the batch's index in the epoch
        meters.data_loaded()
        images, target = images.to(args.device, non_blocking=True), target.to(args.device, non_blocking=True)
        with prec.autocast():
            output = model(prec.inputs(images)).float()
        loss = criterion(output, target)
        # Before the step, so the classifier keeps its last finite weights; under DDP every rank stops together.
        rs.check_finite(loss, epoch, i, lambda: blame(model, images, args), args.ckpt_dir, args.device)
        optimizer.zero_grad(set_to_none=True)
        prec.backward_step(loss, optimizer)
        meters.update({"loss": loss, "logits": output, "labels": target}, target.shape[0])
        meters.batch_done(i)
    D.report_skipped(loader.dataset, epoch)
    return meters.summary()


@torch.no_grad()
def blame(model: nn.Module, images: torch.Tensor, args: argparse.Namespace) -> str:
    """What a non-finite loss of the classifier says to do: a frozen backbone
    whose state or features are not usable is the checkpoint's fault, which
    no --lr can mend; otherwise the classifier diverged."""
    net = unwrap(model)
    problem = state_problem(net, skip_prefix=f"{net.head_name}.")
    if problem is None:
        seen = []
        hook = getattr(net, net.head_name).register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
        try:
            net(images)
        finally:
            hook.remove()
        if seen and not bool(torch.isfinite(seen[0]).all()):
            problem = "it gives non-finite features"
    if problem is None:
        return "lower --lr"
    source = f"--pretrained '{args.pretrained}'" if args.pretrained else "the randomly initialised -a " + args.arch
    return (
        f"the frozen backbone ({source}) is not usable: {problem}, so no --lr can help "
        "(pretrain it again, e.g. with larger BN groups: raise -b or lower --bn-splits)"
    )


@torch.no_grad()
def validate(
    loader: D.ResumableLoader,
    model: nn.Module,
    criterion: nn.Module,
    args: argparse.Namespace,
    prec: Precision | None = None,
) -> tuple[float, float, float]:
    """(top-1, top-5, loss) on the whole validation set (every rank evaluates all of it)."""
    meters = EpochMeters(len(loader), "Test: ", args.print_freq, data_time=False)
    net = unwrap(model)
    net.eval()
    prec = prec or Precision()
    for i, (images, target) in enumerate(loader):
        images, target = images.to(args.device, non_blocking=True), target.to(args.device, non_blocking=True)
        with prec.autocast():
            output = net(prec.inputs(images)).float()
        loss = criterion(output, target)
        if not torch.isfinite(loss):  # the last step made the weights non-finite: no accuracy, no model_best
            raise UserError(
                f"validation loss became {loss.item()}: the classifier's weights are not finite; "
                "lower --lr (checkpoints already written are unchanged)"
            )
        meters.update({"loss": loss, "logits": output, "labels": target}, target.shape[0])
        meters.batch_done(i)
    row = meters.summary()
    if du.is_main_process():
        print(f" * Acc@1 {row['acc1']:.3f} Acc@5 {row['acc5']:.3f}", flush=True)
    return row["acc1"], row["acc5"], row["loss"]
