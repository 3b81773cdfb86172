#!/usr/bin/env python3
"""BI analysis: binning estimates of I(X;T) and I(T;Y) for several models.

    python data/cal_mi.py            # every pair in results/embeddings/

reads `<name>_embed.npy` / `<name>_labels.npy` (from DisCo/export_embed.py),
estimates the mutual information for each model and each bin count of
--sweep, and writes results/bi/bi.csv (all rows), results/bi/bi.md (the
--bins rows) and results/bi/bi.png. See docs/analysis.md for the formulas.
"""

from pathlib import Path

from selfsup.analysis import bi, embeddings
from selfsup.analysis.mutual_info import NORMALISATIONS, RANGES
from selfsup.core import checks
from selfsup.core.errors import UserError, cli_main
from selfsup.core.files import atomic_write

REPO = Path(__file__).resolve().parents[1]  # this script's checkout: where results/ goes


def build_parser():
    p = checks.FlagParser(description="Binning estimate of I(X;T) and I(T;Y) of exported embeddings")
    embeddings.add_embedding_args(p, str(REPO / "results" / "embeddings"), "to analyse")
    p.add_argument("--bins", type=int, default=30, help="bin count of the markdown table and the marked points (30)")
    p.add_argument(
        "--sweep",
        nargs="+",
        type=int,
        default=[2, 4, 8, 16, 30, 64],
        help="bin counts for the CSV and the curves (2 4 8 16 30 64; --bins is added)",
    )
    p.add_argument(
        "--norm",
        choices=NORMALISATIONS,
        default="softmax",
        help="row normalisation before binning (softmax, as the original)",
    )
    p.add_argument(
        "--range",
        dest="value_range",
        choices=RANGES,
        default="data",
        help="bin edges over the observed min..max ('data', default) or over [0, 1] ('unit')",
    )
    p.add_argument(
        "--out-dir",
        default=str(REPO / "results" / "bi"),
        help="where bi.csv, bi.md and bi.png go (default: results/bi)",
    )
    return p


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    for b in [args.bins, *args.sweep]:
        checks.at_least(b, 2, "--bins/--sweep", "bin counts of 2 or more")
    checks.output_dir(args.out_dir, "--out-dir")  # before the analysis, not after it
    names = args.names or embeddings.names_in(args.embed_dir)
    if not names:
        raise UserError(
            f"{args.embed_dir}: no <name>_embed.npy with a matching <name>_labels.npy "
            "(export embeddings first: DisCo/export_embed.py)"
        )
    bins_list = sorted(set(args.sweep) | {args.bins})
    models = [(n, *embeddings.load(args.embed_dir, n)) for n in names]
    rows = bi.analyse(models, bins_list, norm=args.norm, value_range=args.value_range)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = bi.markdown_table(rows, bins=args.bins)
    bi.write_csv(rows, out / "bi.csv")
    with atomic_write(out / "bi.md", "w", what="table") as f:
        f.write(table)
    bi.plot(rows, out / "bi.png", bins=args.bins)
    print(table, end="")
    print(f"=> wrote {out / 'bi.csv'}, {out / 'bi.md'}, {out / 'bi.png'}")


if __name__ == "__main__":
    main()
