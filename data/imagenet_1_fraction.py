#!/usr/bin/env python3
"""Copy the 1% or 10% labelled subset of an ImageNet-style train set (Fig5).

    python3 -u imagenet_1_fraction.py --ratio 1 --source /path/to/imagenet \\
        --output /path/to/imagenet_1_fraction [--split-file 1percent.txt]

With --split-file (SimCLR's 1percent.txt / 10percent.txt) the subset is the
listed files; without, a seeded class-balanced ratio% of each class. The
output gets train/ (the subset) and val/ (the whole validation set)."""
import argparse
import os

from selfsup import subset
from selfsup.errors import cli_main

HERE = os.path.dirname(os.path.abspath(__file__))


@cli_main
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, required=True, help="percent of labelled images: 1 or 10")
    p.add_argument("--source", default=os.environ.get("DISCO_DATA", os.path.join(HERE, "builtin")),
                   help="folder with train/ and val/ (default: $DISCO_DATA or data/builtin)")
    p.add_argument("--output", default=None, help="default: <source>_<ratio>_fraction")
    p.add_argument("--split-file", default=None, help="SimCLR split file (one file name a line)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link", action="store_true", help="symlink instead of copying")
    args = p.parse_args()
    out = args.output or f"{args.source.rstrip('/')}_{args.ratio:g}_fraction"
    files = subset.class_files(os.path.join(args.source, "train"))
    chosen = (subset.split_file_subset(files, args.split_file) if args.split_file
              else subset.balanced_subset(files, args.ratio, args.seed))
    n_train = subset.write_subset(os.path.join(args.source, "train"), os.path.join(out, "train"), chosen, args.link)
    val = subset.class_files(os.path.join(args.source, "val"))
    n_val = subset.write_subset(os.path.join(args.source, "val"), os.path.join(out, "val"), val, args.link)
    total = sum(len(v) for v in chosen.values())
    print(f"=> {out}: train {total} images ({n_train} new) in {len(chosen)} classes, val {n_val} new")


if __name__ == "__main__":
    main()
