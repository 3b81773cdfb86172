#!/usr/bin/env python3
"""CPU time of one MoCo-v2 training step with --bn-splits 8 against
--bn-splits 1.

The step is the training loop's: forward of both views (query encoder,
momentum update, keys with shuffle-BN, InfoNCE), backward, SGD step, on
random images of a small size with the --small-images stem. Three variants
per backbone:
  bn-splits 1      one BN batch per step (the target's reference)
  bn-splits 8      split BatchNorm layers: 8 BN groups in one forward
  old loop (8)     the whole encoder once per group (32 images at -b 256):
                   what --bn-splits 8 ran before the split layers
The variants' steps are interleaved; the median wall and CPU time of
--repeats steps each (after one warm-up step) are printed, with the ratio
to bn-splits 1; the target is within 10%.

  python benchmarks/bn_splits.py                       (resnet18, efficientb0; bs 256, 32 px)
  python benchmarks/bn_splits.py --archs resnet18 -b 64 --repeats 3
"""

import argparse
import statistics
import time
import types

import torch
from torch import nn

from selfsup.core.errors import cli_main
from selfsup.methods.moco import MoCo
from selfsup.models.encoders import build_query_encoder


class PerGroupLoop(nn.Module):
    """The encoder run once per BN group: the old --bn-splits path."""

    def __init__(self, encoder: nn.Module, groups: int):
        super().__init__()
        self.encoder, self.groups = encoder, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder(part) for part in torch.tensor_split(x, self.groups)])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--archs", default="resnet18,efficientb0", help="comma-separated -a names")
    p.add_argument("-b", "--batch-size", default=256, type=int)
    p.add_argument("--image-size", default=32, type=int)
    p.add_argument("--bn-splits", default=8, type=int, help="the groups compared with --bn-splits 1")
    p.add_argument("--repeats", default=5, type=int, help="timed steps per variant (the median is printed)")
    p.add_argument("--threads", default=0, type=int, help="torch threads (0: torch's default)")
    p.add_argument("--moco-k", default=4096, type=int)
    return p.parse_args(argv)


def build(arch: str, variant: str, splits: int, queue: int) -> MoCo:
    """MoCo-v2 (--mlp) on `arch` with the BN grouping of `variant`."""
    torch.manual_seed(0)
    encoder = build_query_encoder(
        types.SimpleNamespace(arch=arch, small_images=True, moco_dim=128, mlp=True, hidden=-1)
    )
    if variant == "loop":
        return MoCo(PerGroupLoop(encoder, splits), dim=128, K=queue, T=0.2, bn_splits=1)
    return MoCo(encoder, dim=128, K=queue, T=0.2, bn_splits=splits if variant == "split" else 1)


def step_timer(model: MoCo, images: tuple):
    """A function that runs one training step of `model` and returns its
    (wall, CPU) seconds; CPU time counts this process's threads only, so it
    says more than wall time on a machine shared with other work."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], 0.03, momentum=0.9)

    def step():
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model(*images)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    return step


def median_times(steps: dict, repeats: int) -> dict:
    """{variant: (median wall, median CPU)}: the variants' steps interleaved,
    so load from other processes falls on all of them alike; one warm-up
    step each first."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return {
        name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    images = (torch.randn(shape), torch.randn(shape))
    print(
        f"CPU, {torch.get_num_threads()} threads, batch {args.batch_size}, {args.image_size} px, small-images stem, "
        f"median of {args.repeats} steps (forward + backward + SGD)",
        flush=True,
    )
    labels = {
        "plain": "--bn-splits 1",
        "split": f"--bn-splits {args.bn_splits}",
        "loop": f"old loop ({args.bn_splits})",
    }
    for arch in args.archs.split(","):
        steps = {v: step_timer(build(arch, v, args.bn_splits, args.moco_k), images) for v in labels}
        times = median_times(steps, args.repeats)
        base_wall, base_cpu = times["plain"]
        for variant, (wall, cpu) in times.items():
            ratio = "" if variant == "plain" else f"  ratio {wall / base_wall:.3f} wall, {cpu / base_cpu:.3f} CPU"
            print(f"{arch:12s} {labels[variant]:16s} {wall:8.3f} s/step wall, {cpu:8.3f} s CPU{ratio}", flush=True)


if __name__ == "__main__":
    cli_main(main)()
