"""SwAV's linear evaluation (swav-master/eval_linear.py): a frozen backbone
in eval mode, its features pooled globally (or, --global_pooling false, a
6x6 average pool of the final map, optionally BatchNorm'd), one linear
layer trained with SGD and a cosine or step schedule; top-1/top-5 on val/
after every epoch; `checkpoint.pth.tar` in --dump_path and automatic restart.
Its flags: swav-master/eval_linear.py and selfsup.cli.swav_flags."""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn
import torchvision.transforms as T

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.core.distributed import unwrap
from selfsup.core.errors import UserError
from selfsup.data import folders as D
from selfsup.data.multicrop import SWAV_MEAN, SWAV_STD
from selfsup.engine import runstate as rs
from selfsup.engine.checkpointing import CheckpointWriter, continue_mid_epoch, mid_epoch_state
from selfsup.engine.loaders import train_val_loaders
from selfsup.engine.progress import EpochMeters, MetricsWriter
from selfsup.engine.runstate import seed_everything
from selfsup.models.backbones import create_backbone
from selfsup.models.health import state_problem


def linear_transforms(size: int = 224) -> tuple[T.Compose, T.Compose]:
    """(train, val) transforms of the original eval_linear.py (orig:swav-master/eval_linear.py:115-130):
    SwAV's normalisation, std 0.228 for red (not ImageNet's 0.229); val resizes to size*256/224."""
    norm = T.Normalize(mean=SWAV_MEAN, std=SWAV_STD)
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val = T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor(), norm])
    return train, val


class ResNetFeatureMap(nn.Module):
    """A ResNet trunk's final feature map, before the global average pool
    (SwAV's ``eval_mode=True``)."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.resnet
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


class LinearHead(nn.Module):
    """SwAV's RegLog (orig:swav-master/eval_linear.py, class RegLog), then
    Linear (weight N(0, 0.01), bias 0).

    global_pooling: the input is the globally pooled feature (width), and
    --use_bn has no effect, as in the original; pooled_bn (ours) adds
    BatchNorm1d there. Otherwise the input is the final map (width, h, w):
    AvgPool2d(6, stride 1), BatchNorm2d if use_bn, flatten, Linear of
    width * (h - 5) * (w - 5) inputs (8192 for a 224 px ResNet-50)."""

    def __init__(
        self,
        width: int,
        num_classes: int,
        use_bn: bool = False,
        global_pooling: bool = True,
        map_size: tuple[int, int] | None = None,
        pooled_bn: bool = False,
    ):
        super().__init__()
        self.pool, self.bn = None, None
        if global_pooling:
            inputs = width
            if pooled_bn:
                self.bn = nn.BatchNorm1d(width)
        else:
            h, w = map_size
            if h < 6 or w < 6:
                raise UserError(
                    f"--global_pooling false needs a final feature map of at least 6x6, got {h}x{w}: "
                    "raise --image_size or use --global_pooling true"
                )
            self.pool = nn.AvgPool2d(6, stride=1)
            inputs = width * (h - 5) * (w - 5)
            if use_bn:
                self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(inputs, num_classes)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.linear(torch.flatten(x, 1))


def make_head(args: argparse.Namespace, model: nn.Module, width: int, num_classes: int) -> LinearHead:
    """The linear head for --global_pooling/--use_bn/--pooled_bn; the map
    size without global pooling comes from a dry run at --image_size."""
    map_size = None
    if not args.global_pooling:
        with torch.no_grad():
            shape = model(torch.zeros(1, 3, args.image_size, args.image_size)).shape
        map_size = tuple(shape[-2:])
    return LinearHead(width, num_classes, args.use_bn, args.global_pooling, map_size, args.pooled_bn)


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch lr, stepped after each epoch (orig:swav-master/eval_linear.py, "set scheduler")."""
    if args.scheduler_type == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.final_lr)


def load_frozen_backbone(args: argparse.Namespace) -> tuple[nn.Module, int, bool]:
    small = args.small_images
    ckpt = ck.load_file(args.pretrained, "--pretrained checkpoint") if args.pretrained else None
    if small is None:
        small = False
        if ckpt is not None:
            state = ck.state_dict_of(ckpt, args.pretrained)
            w = state.get("module.conv1.weight", state.get("conv1.weight"))
            small = ck.small_images_of(ckpt, bool(w is not None and w.dim() == 4 and w.shape[-1] == 3))
    model, width = create_backbone(args.arch, small)
    if ckpt is not None:
        state = ck.backbone_state(ck.state_dict_of(ckpt, args.pretrained), model.head_name)
        problem = ck.describe_mismatch(model.state_dict(), state)
        if problem:
            raise ck.arch_mismatch("--pretrained", args.pretrained, "--arch", args.arch, problem, ckpt)
        model.load_state_dict(state, strict=True)
    elif du.is_main_process():
        print("=> no --pretrained: evaluating a randomly initialised backbone", flush=True)
    for p in model.parameters():
        p.requires_grad = False
    return model.eval(), width, small


# Flags that define an evaluation (the checkpoint's "run", compared on restart).
RUN_KEYS = (
    "arch",
    "global_pooling",
    "use_bn",
    "pooled_bn",
    "batch_size",
    "world_size",
    "lr",
    "wd",
    "nesterov",
    "scheduler_type",
    "decay_epochs",
    "gamma",
    "final_lr",
    "seed",
    "image_size",
    "small_images",
)


OUTPUTS = ("checkpoint.pth.tar", "metrics.csv", "tb")


def foreign_output(name: str) -> str | None:
    """Whose file a top-level name of --dump_path is, when not this evaluation's."""
    if name.startswith("checkpoint_") and ck.checkpoint_progress(name) is not None:
        return "a MoCo-family pretraining run's"
    if name == "checkpoints" or (name.startswith("queue") and name.endswith(".pth")):
        return "a SwAV pretraining run's"
    return "a linear evaluation's (moco/main_lincls.py)" if name == "model_best.pth.tar" else None


def prepare_dump(args: argparse.Namespace, last: str) -> None:
    """Rank 0, before the evaluation writes: a folder of another kind of run,
    or a --pretrained among this evaluation's outputs, is refused; stale
    temporaries out; unless restarting, a previous evaluation's files move aside."""
    inputs = {"--pretrained": args.pretrained}
    rs.check_run_folder(args.dump_path, "--dump_path", OUTPUTS.__contains__, foreign_output, inputs, "evaluation")
    ck.remove_stale_temporaries(args.dump_path)
    if not (args.restart and os.path.isfile(last)):
        rs.archive_previous_run(args.dump_path, list(OUTPUTS), "--dump_path")


def run_eval_linear(args: argparse.Namespace) -> dict[str, float]:
    with rs.owned_run(args.dump_path, "--dump_path"):
        return _eval_linear(args)


def _eval_linear(args):
    seed_everything(args.seed + args.rank)
    main = du.is_main_process()
    train_tf, val_tf = linear_transforms(args.image_size)
    train_set = D.image_folder(D.split_folder(args.data_path, "train"), train_tf, what="--data_path train folder")
    val_set = D.image_folder(D.split_folder(args.data_path, "val"), val_tf, what="--data_path val folder")
    if train_set.classes != val_set.classes:
        raise UserError(f"'{args.data_path}/train' and '{args.data_path}/val' have different class folders")
    train_loader, val_loader = train_val_loaders(train_set, val_set, args)
    model, width, small = load_frozen_backbone(args)
    if not args.global_pooling:
        model = ResNetFeatureMap(model).eval()
    head = make_head(args, model, width, len(train_set.classes))
    model = model.to(args.device)
    if args.distributed and args.device.type == "cuda":
        head = nn.SyncBatchNorm.convert_sync_batchnorm(head)  # as the original; only matters with --use_bn
    head = head.to(args.device)
    if args.distributed:
        head = nn.parallel.DistributedDataParallel(head, device_ids=[args.gpu] if args.device.type == "cuda" else None)
    if main:
        print(
            f"=> {args.arch} (frozen, small_images={small}) + linear "
            f"{unwrap(head).linear.in_features}->{len(train_set.classes)}; "
            f"{len(train_set)} train / {len(val_set)} val images",
            flush=True,
        )
    optimizer = torch.optim.SGD(
        head.parameters(), lr=args.lr, nesterov=args.nesterov, momentum=0.9, weight_decay=args.wd
    )
    scheduler = make_scheduler(optimizer, args)

    start_epoch, best_acc = 0, 0.0
    last = os.path.join(args.dump_path, "checkpoint.pth.tar")
    identity = rs.run_identity(args, RUN_KEYS, ("pretrained",))
    writer = CheckpointWriter(head, optimizer, args.arch, run=identity)
    rs.on_rank0(lambda: prepare_dump(args, last))
    mid = None
    ckpt = rs.on_rank0(lambda: ck.load_file(last, "restart checkpoint") if os.path.isfile(last) else None)
    if ckpt is not None:
        mid = mid_epoch_state(ckpt, last)
        # Another --pretrained (or flags) would report the old model's accuracy as the new one's.
        rs.check_identity(
            ckpt.get("run"), identity, last, "use another --dump_path, or --restart false to start from scratch"
        )
        ck.load_into(
            unwrap(head), ck.strip_prefix(ck.state_dict_of(ckpt, last), "module."), last, args.arch, flag="--arch"
        )
        writer.restore(ckpt)
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best_acc = int(ckpt["epoch"]), float(ckpt.get("best_acc", 0.0))
        if main:
            where = f" iteration {mid['iteration']}" if mid else ""
            print(f"=> restarting from '{last}' at epoch {start_epoch}{where}", flush=True)

    def save_mid(epoch, i):
        return writer.save_mid_epoch(last, epoch, train_loader, i, scheduler=scheduler.state_dict(), best_acc=best_acc)

    train_loader.hook = rs.boundary_hook(save_mid, getattr(args, "save_freq", 0), args.device)

    metrics = MetricsWriter(args.dump_path, start_epoch) if main else None
    criterion = nn.CrossEntropyLoss()
    acc1 = acc5 = 0.0
    for epoch in range(start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        if mid is not None:  # continue a mid-epoch checkpoint exactly
            continue_mid_epoch(train_loader, mid)
            mid = None
        else:  # per-epoch seeds: a run restarted at an epoch repeats its batches
            seed_everything(args.seed + 1000 * epoch + args.rank)
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, head, train_loader, optimizer, criterion, epoch, args)
        scheduler.step()
        acc1, acc5, val_loss = validate(model, unwrap(head), val_loader, criterion, args)
        best_acc = max(best_acc, acc1)
        if main:
            print(
                f"Test: Epoch [{epoch}]\tAcc@1 {acc1:.3f}\tAcc@5 {acc5:.3f}\tBest Acc@1 so far {best_acc:.3f}",
                flush=True,
            )
            metrics.write(  # first: a kill between the two redoes this epoch's row
                epoch,
                lr=lr,
                loss=train["loss"],
                train_acc1=train["acc1"],
                val_loss=val_loss,
                acc1=acc1,
                acc5=acc5,
                best_acc1=best_acc,
            )
            writer.save(last, epoch + 1, scheduler=scheduler.state_dict(), best_acc=best_acc)
        if epoch < args.epochs - 1 and rs.any_rank(rs.stop_signal() is not None, args.device):
            rs.announce_stop(last, epoch)
    if main:
        metrics.close()
        print(f"=> linear evaluation done: best Acc@1 {best_acc:.3f}", flush=True)
    return {"acc1": acc1, "acc5": acc5, "best_acc1": best_acc}


def train_one_epoch(
    model: nn.Module,
    head: nn.Module,
    loader: D.ResumableLoader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epoch: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """One epoch of the head; returns the meters summary ({"loss", "acc1", "epoch_time"})."""
    meters = EpochMeters(len(loader), f"Epoch: [{epoch}]", args.print_freq, topk=(1,))
    model.eval()
    head.train()
    for i, (images, target) in enumerate(loader, getattr(loader, "start", 0)):  # i: the batch's index in the epoch
        meters.data_loaded()
        images, target = images.to(args.device, non_blocking=True), target.to(args.device, non_blocking=True)
        with torch.no_grad():
            feats = model(images)
        output = head(feats)
        loss = criterion(output, target)
        # Before the step, so the head keeps its last finite weights; under DDP every rank stops together.
        rs.check_finite(loss, epoch, i, lambda: blame(model, feats, args), args.dump_path, args.device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meters.update({"loss": loss, "logits": output, "labels": target}, images.shape[0])
        meters.batch_done(i)
    D.report_skipped(loader.dataset, epoch)
    return meters.summary()


def blame(model: nn.Module, feats: torch.Tensor, args: argparse.Namespace) -> str:
    """What a non-finite loss says to do: a frozen backbone whose state or
    features are unusable is the checkpoint's fault; otherwise the head diverged."""
    problem = state_problem(model)
    if problem is None and not bool(torch.isfinite(feats).all()):
        problem = "it gives non-finite features"
    if problem is None:
        return "lower --lr"
    source = f"--pretrained '{args.pretrained}'" if args.pretrained else "the randomly initialised --arch " + args.arch
    return f"the frozen backbone ({source}) is not usable: {problem}, so no --lr can help (pretrain it again)"


@torch.no_grad()
def validate(
    model: nn.Module, head: nn.Module, loader: D.ResumableLoader, criterion: nn.Module, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(top-1, top-5, loss) on the whole val set; no per-batch lines, as the original."""
    meters = EpochMeters(len(loader))
    model.eval()
    head.eval()
    for images, target in loader:
        images, target = images.to(args.device, non_blocking=True), target.to(args.device, non_blocking=True)
        output = head(model(images))
        loss = criterion(output, target)
        if not torch.isfinite(loss):  # the last step made the weights non-finite: no accuracy, no checkpoint
            raise UserError(
                f"validation loss became {loss.item()}: the linear head's weights are not finite; "
                "lower --lr (the checkpoint already written is unchanged)"
            )
        meters.update({"loss": loss, "logits": output, "labels": target}, images.shape[0])
    row = meters.summary()
    if du.is_main_process():
        print(f" * Acc@1 {row['acc1']:.3f} Acc@5 {row['acc5']:.3f}", flush=True)
    return row["acc1"], row["acc5"], row["loss"]
