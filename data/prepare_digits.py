#!/usr/bin/env python3
"""Write scikit-learn's 1,797 handwritten digits as train/ and val/ ImageFolder
trees (no download: the images ship with scikit-learn).

    python3 data/prepare_digits.py                  # -> data/digits, 32 px, 25% of each digit in val/
    python3 data/prepare_digits.py --out /tmp/d --size 24
"""

import argparse
import os
import time

from selfsup.core import checks
from selfsup.core.errors import UserError, cli_main
from selfsup.data.digits import prepare_digits

HERE = os.path.dirname(os.path.abspath(__file__))


@cli_main
def main(argv=None):
    p = checks.FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "digits"))
    p.add_argument("--size", type=int, default=32, help="image side in pixels (upscaled from 8)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of each digit in val/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rewrite even if the tree is complete")
    args = p.parse_args(argv)
    if args.size < 8:
        raise UserError(f"--size {args.size}: expected at least 8 (the digits are 8x8)")
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: expected a number in (0, 1)")
    checks.seed(args.seed)
    start = time.time()
    n = prepare_digits(args.out, args.size, args.val_fraction, args.seed, args.force)
    if n == 0:
        print(f"=> {args.out} is already complete")
    else:
        print(f"=> wrote {n} digit images to {args.out} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
