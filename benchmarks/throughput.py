#!/usr/bin/env python3
"""Training throughput (image pairs per second) of the original path and the
fast path, in one run on one machine (docs/speed.md).

For MoCo-v2 ResNet-50, MoCo-v2 EfficientNet-B0 and DisCo EfficientNet-B0 <-
ResNet-50 (random weights: speed does not depend on them):
  (a) synthetic: the training step alone on random tensors (compute ceiling);
  (b) data only: the two-view pipeline alone, from a folder of JPEGs;
  (c) end to end: pipeline + training step from the JPEGs.
Original path: fp32, PIL + torchvision MoCo-v2 augmentation in DataLoader
workers. Fast path: --precision bf16 --channels-last --gpu-aug (with
--gpu-aug-decode gpu, and 'workers' as a second variant).

GPU:  python benchmarks/throughput.py                   (bs 256, 224 px, 16 workers)
CPU:  python benchmarks/throughput.py --tiny            (seconds; for CI)
"""

import argparse
import os
import platform
import time
import types

import numpy as np
import torch

from selfsup.core.errors import UserError, cli_main
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.data.gpu_augment import moco_spec
from selfsup.data.jpeg import two_view_loader
from selfsup.engine.precision import Precision
from selfsup.methods.disco import DisCo
from selfsup.methods.moco import MoCo
from selfsup.models.encoders import build_query_encoder
from selfsup.models.teacher import EmbeddingTeacher

MODELS = {
    "moco_r50": ("MoCo-v2 ResNet-50", "resnet50", None),
    "moco_effb0": ("MoCo-v2 EfficientNet-B0", "efficientb0", None),
    "disco_effb0_r50": ("DisCo EfficientNet-B0 <- ResNet-50", "efficientb0", "resnet50"),
    "moco_r18": ("MoCo-v2 ResNet-18", "resnet18", None),
    "disco_r18_r50": ("DisCo ResNet-18 <- ResNet-50", "resnet18", "resnet50"),
}
PATHS = {  # name: (precision, channels_last, pipeline)
    "original": ("fp32", False, "pil"),
    "fast": ("bf16", True, "gpu"),
    "fast-workers-crop": ("bf16", True, "workers"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if visible), cuda or cpu")
    p.add_argument(
        "--models", default="moco_r50,moco_effb0,disco_effb0_r50", help=f"comma-separated, from {', '.join(MODELS)}"
    )
    p.add_argument("--paths", default="original,fast,fast-workers-crop", help=f"from {', '.join(PATHS)}")
    p.add_argument("-b", "--batch-size", default=256, type=int)
    p.add_argument("--image-size", default=224, type=int)
    p.add_argument("--steps", default=20, type=int, help="timed steps per measurement")
    p.add_argument("--warmup", default=5, type=int, help="untimed steps first")
    p.add_argument("-j", "--workers", default=16, type=int, help="DataLoader workers (capped at the CPU count)")
    p.add_argument("--jpeg-dir", default="", help="ImageFolder of JPEGs (default: write --jpegs synthetic ones)")
    p.add_argument("--jpegs", default=1024, type=int, help="JPEGs to write when --jpeg-dir is not given")
    p.add_argument("--jpeg-size", default="500x375", help="WxH of the written JPEGs (ImageNet-like)")
    p.add_argument("--moco-k", default=65536, type=int)
    p.add_argument("--bn-splits", default=1, type=int, help="as in training (1: one BN batch per step)")
    p.add_argument("--skip-e2e", action="store_true", help="synthetic inputs only")
    p.add_argument(
        "--tiny", action="store_true", help="CPU smoke test: bs 4, 32 px, 2+1 steps, 16 small JPEGs, no workers"
    )
    p.add_argument("--threads", default=0, type=int, help="CPU threads of torch (0: torch's default; --tiny: 1)")
    p.add_argument("--out", default="", help="also write the table (markdown) to this file")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch_size, args.image_size, args.steps, args.warmup = 4, 32, 2, 1
        args.workers, args.jpegs, args.jpeg_size, args.moco_k = 0, 16, "64x48", 64
        args.threads = args.threads or 1  # a busy CI machine: one thread is faster than oversubscribed ones
        if args.device == "auto":
            args.device = "cpu"
    args.device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible")
    args.models = [m for m in args.models.split(",") if m]
    args.paths = [q for q in args.paths.split(",") if q]
    for m in args.models:
        if m not in MODELS:
            raise UserError(f"--models: unknown '{m}' (expected {', '.join(MODELS)})")
    for q in args.paths:
        if q not in PATHS:
            raise UserError(f"--paths: unknown '{q}' (expected {', '.join(PATHS)})")
    try:
        w, h = (int(v) for v in args.jpeg_size.lower().split("x"))
    except ValueError:
        raise UserError(f"--jpeg-size {args.jpeg_size}: expected WxH, e.g. 500x375") from None
    args.jpeg_wh = (w, h)
    if min(args.batch_size, args.steps, w, h) < 1 or args.warmup < 0:
        raise UserError("-b, --steps and --jpeg-size must be positive, --warmup not negative")
    args.workers = max(0, min(args.workers, os.cpu_count() or 1))
    return args


# -- data ------------------------------------------------------------------------
def _photo_like(rng, w, h):
    """Smooth colour fields plus texture: JPEG sizes near real photos'."""
    from PIL import Image

    low = rng.random((h // 25 + 2, w // 25 + 2, 3))
    img = np.array(Image.fromarray((low * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 18, (h, w, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def write_jpegs(root, n, wh, seed=0):
    """root/train/<class>/*.jpg, quality 90, 4 classes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = os.path.join(root, "train", f"c{i % 4}")
        os.makedirs(folder, exist_ok=True)
        _photo_like(rng, *wh).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return root


def repeat_samples(dataset, total):
    """Repeat the file list so one epoch holds at least `total` images (the
    page cache serves the repeats; decoding is what costs)."""
    reps = max(1, -(-total // len(dataset.samples)))
    dataset.samples = dataset.samples * reps
    dataset.targets = [t for _, t in dataset.samples]
    dataset.imgs = dataset.samples
    return dataset


def make_loader(args, pipeline, train_dir):
    total = args.batch_size * (args.warmup + args.steps + 2)
    if pipeline == "pil":
        ds = D.image_folder(train_dir, augment.TwoCropsTransform(augment.moco_v2_transform(args.image_size)))
        repeat_samples(ds, total)
        return D.make_loader(ds, args.batch_size, args.workers, shuffle=True, drop_last=True, distributed=False)
    loader = two_view_loader(
        train_dir, moco_spec(True, args.image_size), args.batch_size, args.workers, args.device, decode=pipeline
    )
    repeat_samples(loader.loader.dataset, total)
    return loader


# -- models ----------------------------------------------------------------------
def build(name, args):
    _, student, teacher_arch = MODELS[name]
    ns = types.SimpleNamespace(
        arch=student, small_images=False, moco_dim=128, mlp=True, hidden=2048 if teacher_arch else -1
    )
    kwargs = dict(dim=128, K=args.moco_k, m=0.999, T=0.2, bn_splits=args.bn_splits)
    if teacher_arch is None:
        return MoCo(build_query_encoder(ns), **kwargs)
    teacher = EmbeddingTeacher(
        build_query_encoder(
            types.SimpleNamespace(arch=teacher_arch, small_images=False, moco_dim=128, mlp=True, hidden=-1)
        )
    )
    return DisCo(build_query_encoder(ns), teacher, teacher_bn="eval", **kwargs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(batches, step, args):
    """pairs/s over args.steps calls of step(batch) after args.warmup."""
    it = iter(batches)
    for _ in range(args.warmup):
        step(next(it))
    sync(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(next(it))
    sync(args.device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def measure(name, path, args, train_dir):
    precision, channels_last, pipeline = PATHS[path]
    prec = Precision(precision, args.device, channels_last)
    torch.manual_seed(0)
    model = prec.model(build(name, args).to(args.device)).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 0.03, momentum=0.9, weight_decay=1e-4)

    def train_step(views):
        q, k = (prec.inputs(v.to(args.device, non_blocking=True)) for v in views)
        with prec.autocast():
            loss = model(q, k)["loss"]
        opt.zero_grad(set_to_none=True)
        prec.backward_step(loss, opt)

    if args.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(args.device)
    row = {"model": MODELS[name][0], "path": path, "precision": prec.name, "pipeline": pipeline}
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    fixed = [torch.randn(shape, device=args.device), torch.randn(shape, device=args.device)]
    row["synthetic"] = timed(iter(lambda: fixed, None), train_step, args)
    if not args.skip_e2e:
        loader = make_loader(args, pipeline, train_dir)
        batches = (views for views, _ in forever(loader))
        row["data"] = timed(batches, lambda views: [v.to(args.device, non_blocking=True) for v in views], args)
        row["e2e"] = timed(batches, train_step, args)
        del loader, batches
    if args.device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
    return row


# -- report ----------------------------------------------------------------------
def machine(args):
    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "no GPU (CPU run)"
    return (
        f"{gpu}; {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
        f"torch {torch.__version__}; batch {args.batch_size}, {args.image_size} px, {args.workers} workers, "
        f"{args.steps} timed steps after {args.warmup}"
    )


def fmt(v, spec=",.0f"):
    return "-" if v is None else format(v, spec)


def table(rows, args):
    lines = [
        f"Machine: {machine(args)}",
        "",
        "| model | path | synthetic pairs/s | data-only pairs/s | end-to-end pairs/s | e2e / synthetic "
        "| peak GPU mem GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    small = args.batch_size < 32
    num = ",.1f" if small else ",.0f"
    for r in rows:
        ratio = r["e2e"] / r["synthetic"] if r.get("e2e") else None
        lines.append(
            f"| {r['model']} | {r['path']} ({r['precision']}) | {fmt(r['synthetic'], num)} | "
            f"{fmt(r.get('data'), num)} | {fmt(r.get('e2e'), num)} | {fmt(ratio, '.0%')} | "
            f"{fmt(r.get('peak_gib'), '.1f')} |"
        )
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        base = next((r for r in rows if r["model"] == model and r["path"] == "original"), None)
        for r in rows:
            if base is None or r["model"] != model or r is base:
                continue
            e2e = f", end to end x{r['e2e'] / base['e2e']:.2f}" if r.get("e2e") and base.get("e2e") else ""
            lines.append(
                f"- {model}, {r['path']} vs original: synthetic x{r['synthetic'] / base['synthetic']:.2f}{e2e}"
            )
    return "\n".join(lines)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the original path's fp32 as measured: TF32 on
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    train_dir = None
    if not args.skip_e2e:
        if args.jpeg_dir:
            train_dir = D.split_folder(args.jpeg_dir, "train")
        else:
            import tempfile

            root = tempfile.mkdtemp(prefix="disco_bench_jpegs_")
            print(f"=> writing {args.jpegs} JPEGs of {args.jpeg_size} to {root}", flush=True)
            train_dir = os.path.join(write_jpegs(root, args.jpegs, args.jpeg_wh), "train")
    rows = []
    for name in args.models:
        for path in args.paths:
            print(f"=> {MODELS[name][0]}, {path} path", flush=True)
            rows.append(measure(name, path, args, train_dir))
            print("   " + ", ".join(f"{k} {v:,.1f}" for k, v in rows[-1].items() if isinstance(v, float)), flush=True)
    text = table(rows, args)
    print("\n" + text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
