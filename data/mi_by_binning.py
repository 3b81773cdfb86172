#!/usr/bin/env python3
"""Binning estimate of I(X;T) and I(T;Y) for one embedding file and its labels.

    python data/mi_by_binning.py EMBED.npy LABELS.npy [--bins 30]

prints H(T) = I(X;T), I(T;Y) and H(Y) in bits. For several models, a table
and a plot use data/cal_mi.py. See docs/analysis.md.
"""

from selfsup.analysis.embeddings import load_npy
from selfsup.analysis.mutual_info import NORMALISATIONS, RANGES, mi_by_binning
from selfsup.core import checks
from selfsup.core.errors import UserError, cli_main


@cli_main
def main(argv=None):
    p = checks.FlagParser(description="Binning estimate of I(X;T) and I(T;Y) of one representation")
    p.add_argument("embed", help="N x D .npy array of representations")
    p.add_argument("labels", help="N .npy array of integer labels")
    p.add_argument("--bins", type=int, default=30, help="number of equal-width bins (30)")
    p.add_argument("--norm", choices=NORMALISATIONS, default="softmax", help="row normalisation (softmax)")
    p.add_argument(
        "--range",
        dest="value_range",
        choices=RANGES,
        default="data",
        help="bin edges over the observed range ('data') or [0, 1] ('unit')",
    )
    args = p.parse_args(argv)
    checks.at_least(args.bins, 2, "--bins", "a bin count of 2 or more")
    t, y = load_npy(args.embed), load_npy(args.labels).reshape(-1)
    if len(t) != len(y):
        raise UserError(f"{args.embed} has {len(t)} rows but {args.labels} has {len(y)} labels; they must match")
    r = mi_by_binning(t, y, n_bins=args.bins, norm=args.norm, value_range=args.value_range)
    print(
        f"I(X;T) = H(T) = {r['I_XT']:.4f} bits   I(T;Y) = {r['I_TY']:.4f} bits   "
        f"H(Y) = {r['H_Y']:.4f} bits   distinct T = {r['n_distinct']} of N = {r['n']}"
    )


if __name__ == "__main__":
    main()
