#!/usr/bin/env python3
"""Copy the 1% or 10% labelled subset of an ImageNet-style train set (Fig5).

    python3 -u imagenet_1_fraction.py --ratio 1 --source /path/to/imagenet \\
        --output /path/to/imagenet_1_fraction

As in the original, --ratio 1 and --ratio 10 copy the files named by
SimCLR's split files, shipped beside this script (1percent.txt,
10percent.txt; see SIMCLR_SPLITS_NOTICE.md); --split-file names another
list. --balanced (or a ratio without a split file) takes a seeded
class-balanced ratio% of each class instead, for data sets whose file names
are not ImageNet's (the built-in set). The output gets train/ (the subset)
and val/ (the whole validation set)."""

import argparse
import json
import os
import shutil

from selfsup.core import checks as check
from selfsup.core.errors import UserError, cli_main
from selfsup.data import subset

HERE = os.path.dirname(os.path.abspath(__file__))
SIMCLR_SPLITS = {1: os.path.join(HERE, "1percent.txt"), 10: os.path.join(HERE, "10percent.txt")}


def parse_args(argv=None):
    p = check.FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=1, help="percent of labelled images (default 1, as the original)")
    p.add_argument(
        "--source",
        default=os.environ.get("DISCO_DATA", os.path.join(HERE, "builtin")),
        help="folder with train/ and val/ (default: $DISCO_DATA or data/builtin)",
    )
    p.add_argument("--output", default=None, help="default: <source>_<ratio>_fraction")
    p.add_argument(
        "--split-file",
        default=None,
        help="list of file names, one a line (default for --ratio 1|10: SimCLR's, shipped in data/)",
    )
    p.add_argument(
        "--balanced", action="store_true", help="a seeded class-balanced ratio%% of each class instead of a split file"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --balanced")
    p.add_argument("--link", action="store_true", help="symlink instead of copying")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the train/ and val/ an earlier run (another ratio or split) left in --output",
    )
    args = p.parse_args(argv)
    if args.balanced and args.split_file:
        raise UserError("--balanced and --split-file both given: choose one")
    if not args.balanced and not args.split_file:
        args.split_file = SIMCLR_SPLITS.get(args.ratio)
        if args.split_file is None:
            raise UserError(
                f"--ratio {args.ratio:g}: SimCLR's split files exist for 1 and 10 only; "
                "give --split-file FILE or --balanced"
            )
    if not 0 < args.ratio <= 100:
        raise UserError(f"--ratio {args.ratio:g}: expected a percentage in (0, 100]")
    check.seed(args.seed)
    if not os.path.isdir(os.path.join(args.source, "train")):
        raise UserError(
            f"--source '{args.source}' has no train/ folder (expected train/ and val/ with class sub-folders)"
        )
    args.output = args.output or f"{args.source.rstrip('/')}_{args.ratio:g}_fraction"
    check_output(args)
    return args


STAMP = ".imagenet_1_fraction.json"


def stamp_of(args):
    """What a finished (or interrupted) run into --output was made from."""
    return {
        "source": os.path.realpath(args.source),
        "ratio": args.ratio,
        "balanced": args.balanced,
        "seed": args.seed if args.balanced else None,
        "split_file": os.path.realpath(args.split_file) if args.split_file else None,
        "link": args.link,
    }


def check_output(args):
    """--output is neither the source nor inside it (nor around it), can be
    written, and holds nothing but an earlier run of the same subset: files
    of another ratio would otherwise stay and be trained on."""
    src, out = os.path.realpath(args.source), os.path.realpath(args.output)
    if out == src or out.startswith(src + os.sep) or src.startswith(out + os.sep):
        raise UserError(
            f"--output '{args.output}' and --source '{args.source}' overlap: give an output folder "
            "outside the source (and not around it)"
        )
    check.output_dir(args.output, "--output")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    stamp = os.path.join(out, STAMP)
    previous = None
    if os.path.isfile(stamp):
        try:
            with open(stamp) as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
    if previous == stamp_of(args):
        return  # the same subset: the rerun copies only what is missing
    if not args.overwrite:
        what = (
            f"another subset (--ratio {previous.get('ratio'):g})"
            if isinstance(previous, dict) and isinstance(previous.get("ratio"), (int, float))
            else "files this script did not make"
        )
        raise UserError(
            f"--output '{args.output}' already holds {what}: give an empty or new folder, or add "
            "--overwrite to replace its train/ and val/"
        )
    if previous is None and set(os.listdir(out)) - {"train", "val", STAMP}:
        raise UserError(
            f"--output '{args.output}' holds files other than train/ and val/: --overwrite only "
            "replaces a folder this script made; give an empty or new folder"
        )
    for sub in ("train", "val"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)


def write_stamp(args):
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, STAMP), "w") as f:
        json.dump(stamp_of(args), f)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    out = args.output
    files = subset.class_files(os.path.join(args.source, "train"))
    chosen = (
        subset.split_file_subset(files, args.split_file)
        if args.split_file
        else subset.balanced_subset(files, args.ratio, args.seed)
    )
    val = subset.class_files(os.path.join(args.source, "val"), "source val folder")  # refused before a copy
    write_stamp(args)  # first: an interrupted run is topped up by the same command, refused by another
    n_train = subset.write_subset(os.path.join(args.source, "train"), os.path.join(out, "train"), chosen, args.link)
    n_val = subset.write_subset(os.path.join(args.source, "val"), os.path.join(out, "val"), val, args.link)
    total = sum(len(v) for v in chosen.values())
    how = f"listed in {args.split_file}" if args.split_file else f"{args.ratio:g}% of each class, seed {args.seed}"
    print(f"=> {out}: train {total} images ({n_train} new; {how}) in {len(chosen)} classes, val {n_val} new")


if __name__ == "__main__":
    main()
