#!/usr/bin/env python3
"""t-SNE pictures of several models' embeddings, side by side.

    cd DisCo && python -u draw.py

reads every `<name>_embed.npy` / `<name>_labels.npy` pair in
../results/embeddings/ (written by export_embed.py), keeps 50 images of each
of the first 10 classes, runs t-SNE per model and writes ../results/tsne.png.
See docs/analysis.md.
"""

from pathlib import Path

from selfsup.analysis import embeddings, tsne
from selfsup.core import checks
from selfsup.core.errors import UserError, cli_main
from selfsup.core.files import check_name, refuse_overwriting

REPO = Path(__file__).resolve().parents[1]  # this script's checkout: where results/ goes


def build_parser():
    p = checks.FlagParser(description="t-SNE scatter plots of exported embeddings, one panel per model")
    embeddings.add_embedding_args(p, str(REPO / "results" / "embeddings"), "to draw, in panel order")
    p.add_argument("--titles", nargs="+", default=None, help="panel titles, one per name (default: the names)")
    p.add_argument(
        "--classes",
        nargs="+",
        type=int,
        default=None,
        help="label values to draw (default: the first --num-classes labels)",
    )
    p.add_argument("--num-classes", type=int, default=10, help="classes drawn when --classes is not given (10)")
    p.add_argument("--per-class", type=int, default=50, help="images drawn per class (50)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (30; lowered for tiny inputs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice and of t-SNE (0)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for t-SNE (1, bit-reproducible and fastest for a few thousand points "
        "on a busy machine; 0: no cap)",
    )
    p.add_argument("--out", default=str(REPO / "results" / "tsne.png"), help="output PNG (default: results/tsne.png)")
    p.add_argument(
        "--per-model",
        action="store_true",
        help="also write one PNG per model, <out stem>_<name>.png (the original's layout)",
    )
    return p


def check_args(args):
    """Ranges and the output PNG's folder, before the t-SNE runs."""
    checks.at_least(args.num_classes, 1, "--num-classes", "a positive number")
    checks.at_least(args.per_class, 1, "--per-class", "a positive number")
    checks.positive(args.perplexity, "--perplexity", "a number > 0")
    checks.seed(args.seed)
    checks.at_least(args.threads, 0, "--threads", "0 (no cap) or more")
    if args.classes is not None and min(args.classes) < 0:
        raise UserError(f"--classes {' '.join(map(str, args.classes))}: expected label values >= 0")
    checks.output_file(args.out, "--out")


def check_outputs(args, names):
    """The pictures to write (--out, then with --per-model one per name):
    each a plain name in --out's folder, and none of them an input file."""
    out = Path(args.out)
    outputs = [out]
    if args.per_model:
        for name in names:
            stem = check_name(f"{out.stem}_{name}", "--names (in a --per-model file name)", out.parent, (out.suffix,))
            outputs.append(out.with_name(stem + out.suffix))
    inputs = [(f"an input of --names {n}", p) for n in names for p in embeddings.embed_paths(args.embed_dir, n)]
    inputs.append(("the class list", Path(args.embed_dir) / embeddings.CLASSES_FILE))
    for path in outputs:
        refuse_overwriting(path, inputs, "--out")
    return outputs


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    names = args.names or embeddings.names_in(args.embed_dir)
    if not names:
        raise UserError(
            f"{args.embed_dir}: no <name>_embed.npy with a matching <name>_labels.npy "
            "(export embeddings first: DisCo/export_embed.py)"
        )
    titles = args.titles or names
    if len(titles) != len(names):
        raise UserError(f"--titles has {len(titles)} entries for {len(names)} names")
    outputs = check_outputs(args, names)
    class_names = embeddings.class_names(args.embed_dir)

    panels = []
    for name, title in zip(names, titles):
        embed, labels = embeddings.load(args.embed_dir, name)
        keep = tsne.select_classes(labels, args.classes, args.num_classes, args.per_class, args.seed)
        print(f"=> t-SNE of {name}: {len(keep)} images, {embed.shape[1]}-d", flush=True)
        xy = tsne.tsne_2d(embed[keep], seed=args.seed, perplexity=args.perplexity, threads=args.threads or None)
        panels.append((title, xy, labels[keep]))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tsne.draw_panels(panels, out, class_names=class_names)
    print(f"=> wrote {out}")
    if args.per_model:
        for path, panel in zip(outputs[1:], panels):
            tsne.draw_panels([panel], path, class_names=class_names)
            print(f"=> wrote {path}")


if __name__ == "__main__":
    main()
