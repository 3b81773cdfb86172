#!/usr/bin/env python3
"""Where the demo's time goes: per training step of each demo model, the time
spent loading data (two augmented views, in this process), in the forward
pass (loss included), in the backward pass and in the optimiser step; and per
step of the linear evaluation and of the kNN probe. Then each demo stage's
total: per-step time times the demo's number of steps.

Times are CPU seconds of this process (time.process_time) at one thread, as
each demo step runs (OMP_NUM_THREADS=1): they hardly change when other work
shares the machine, unlike wall time. On an idle machine they equal wall time
within a few percent (also printed).

    python benchmarks/demo_breakdown.py [--steps 8] [--data data/builtin]
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from selfsup.analysis.knn import checkpoint_knn
from selfsup.core import checkpoint as ck
from selfsup.engine.lincls import build_classifier, freeze_backbone, imagefolder_datasets
from selfsup.engine.pretrain import pretrain_loader
from selfsup.methods.disco import build_disco
from selfsup.methods.moco import build_moco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath, name=None):
    """One of the repository's scripts as a module (they are not a package);
    `name` also registers it in sys.modules, for a sibling that imports it."""
    name = name or relpath.replace("/", "_")[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def script_parser(relpath):
    return load_script(relpath).parse_args


def demo_config():
    load_script("tools/pipeline.py", "pipeline")  # tools/demo.py imports its sibling by that name
    return load_script("tools/demo.py", "demo").CONFIG


def one_process(args):
    args.device, args.distributed, args.rank, args.gpu = torch.device("cpu"), False, 0, None
    return args


class Clock:
    """CPU and wall seconds of named phases, one list per phase."""

    def __init__(self):
        self.cpu, self.wall = {}, {}

    def start(self):
        self._c, self._w = time.process_time(), time.perf_counter()

    def lap(self, name):
        c, w = time.process_time(), time.perf_counter()
        self.cpu.setdefault(name, []).append(c - self._c)
        self.wall.setdefault(name, []).append(w - self._w)
        self._c, self._w = c, w

    def median(self, name, wall=False):
        return statistics.median((self.wall if wall else self.cpu)[name])


def time_pretraining(model, args, steps):
    """Median seconds of data / forward / backward / step over `steps` steps
    (after one warm-up step)."""
    loader = pretrain_loader(args)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr, momentum=0.9)
    model.train()
    clock, batches = Clock(), iter(loader)
    for i in range(steps + 1):
        clock.start()
        (im_q, im_k), _ = next(batches)
        clock.lap("data")
        loss = model(im_q, im_k)["loss"]
        clock.lap("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.lap("backward")
        optimizer.step()
        clock.lap("step")
        if i == 0:  # warm-up
            clock = Clock()
    return clock, len(loader)


def time_linear(arch, args, steps):
    """The linear evaluation's train step (frozen backbone in eval mode, as
    the original) and validation step."""
    args.label = None
    train, val = imagefolder_datasets(args)
    model = build_classifier(arch, len(train.classes), False)
    freeze_backbone(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 0.05, momentum=0.9)
    loaders = {
        name: iter(torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True))
        for name, ds in (("train", train), ("val", val))
    }
    model.eval()
    clock = Clock()
    for i in range(steps + 1):
        clock.start()
        x, y = next(loaders["train"])
        clock.lap("train data")
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock.lap("train step")
        x, y = next(loaders["val"])
        clock.lap("val data")
        with torch.no_grad():
            model(x)
        clock.lap("val step")
        if i == 0:
            clock = Clock()
    per_epoch = {"train": len(train) // args.batch_size, "val": -(-len(val) // args.batch_size)}
    return clock, per_epoch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "data", "builtin"))
    p.add_argument("--steps", type=int, default=8, help="timed steps per model (after one warm-up)")
    opts = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = demo_config()
    common = (
        f"-b {c['batch_size']} --image-size {c['image_size']} -j 0 --seed 0 {c['pretrain_flags']} "
        f"--resume '' {opts.data}"
    ).split()
    common = [a.strip("'") for a in common]
    moco_args = script_parser("moco/main_moco.py")
    teacher_arch, student = c["teacher"]["arch"], c["students"][0]
    rows, lincls_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        args = one_process(moco_args(["-a", teacher_arch, "--ckpt-dir", tmp, *common]))
        teacher = build_moco(args)
        teacher_ckpt = os.path.join(tmp, "teacher.pth.tar")
        ck.save_checkpoint({"epoch": 1, "arch": teacher_arch, "state_dict": ck.prefixed_state(teacher)}, teacher_ckpt)
        plans = [("teacher", teacher, args, c["teacher"]["epochs"])]
        args = one_process(moco_args(["-a", student, "--ckpt-dir", tmp, *common]))
        plans.append(("student_moco", build_moco(args), args, c["student_epochs"]))
        disco_args = script_parser("DisCo/main.py")
        args = one_process(
            disco_args(
                [
                    "-a",
                    student,
                    "--ckpt-dir",
                    tmp,
                    *c["disco_flags"].split(),
                    "--teacher_arch",
                    teacher_arch,
                    "--teacher",
                    teacher_ckpt,
                    *common,
                ]
            )
        )
        plans.append(("student_disco", build_disco(args), args, c["student_epochs"]))
        for name, model, args, epochs in plans:
            clock, per_epoch = time_pretraining(model, args, opts.steps)
            rows.append((name, args.arch, clock, per_epoch * epochs))
        for name, arch in (("teacher", teacher_arch), ("student", student)):
            args.arch = arch
            clock, per_epoch = time_linear(arch, args, opts.steps)
            lincls_rows.append((name, arch, clock, per_epoch))
        start = time.process_time()
        checkpoint_knn(student, None, opts.data, c["image_size"])
        knn_cpu = time.process_time() - start

    phases = ("data", "forward", "backward", "step")
    print(
        f"CPU seconds per step, one thread, batch {c['batch_size']}, {c['image_size']} px "
        f"(median of {opts.steps}); stage total = step x the demo's steps"
    )
    print("| pretraining | arch | " + " | ".join(phases) + " | step | wall step | demo steps | stage CPU min |")
    print("|---|---|" + "---|" * (len(phases) + 4))
    for name, arch, clock, steps in rows:
        step = sum(clock.median(ph) for ph in phases)
        wall = sum(clock.median(ph, wall=True) for ph in phases)
        cells = " | ".join(f"{clock.median(ph):.3f} ({100 * clock.median(ph) / step:.0f}%)" for ph in phases)
        print(f"| {name} | {arch} | {cells} | {step:.3f} | {wall:.3f} | {steps} | {step * steps / 60:.1f} |")
    epochs = c["lincls_epochs"]
    print(
        f"\n| linear evaluation ({epochs} epochs) | arch | train data | train step | val data | val step "
        f"| stage CPU min |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, arch, clock, per_epoch in lincls_rows:
        m = {k: clock.median(k) for k in ("train data", "train step", "val data", "val step")}
        total = epochs * (
            per_epoch["train"] * (m["train data"] + m["train step"])
            + per_epoch["val"] * (m["val data"] + m["val step"])
        )
        print(f"| {name} | {arch} | " + " | ".join(f"{v:.3f}" for v in m.values()) + f" | {total / 60:.1f} |")
    print(f"\nkNN probe of a random-init {student} (train bank + val): {knn_cpu:.1f} CPU s")


if __name__ == "__main__":
    main()
