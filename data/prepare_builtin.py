#!/usr/bin/env python3
"""Make the built-in 10-class dataset (train/ and val/ ImageFolder trees).

python3 data/prepare_builtin.py                 # -> data/builtin, 300+100 per class, 40 px
python3 data/prepare_builtin.py --out /tmp/x --train-per-class 20 --val-per-class 5
"""

import argparse
import os
import time

from selfsup.core import checks
from selfsup.core.errors import cli_main
from selfsup.data.builtin import CLASSES, prepare

HERE = os.path.dirname(os.path.abspath(__file__))


@cli_main
def main(argv=None):
    p = checks.FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "builtin"))
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=40, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="redraw even if the tree is complete")
    args = p.parse_args(argv)
    checks.at_least(args.train_per_class, 1, "--train-per-class", "a positive number of images")
    checks.at_least(args.val_per_class, 1, "--val-per-class", "a positive number of images")
    checks.at_least(args.size, 1, "--size", "a positive number of pixels")
    checks.seed(args.seed)
    start = time.time()
    n = prepare(args.out, args.train_per_class, args.val_per_class, args.size, args.seed, args.force)
    if n == 0:
        print(f"=> {args.out} is already complete ({len(CLASSES)} classes)")
    else:
        print(f"=> wrote {n} images of {len(CLASSES)} classes to {args.out} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
