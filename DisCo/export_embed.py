#!/usr/bin/env python3
"""Export embeddings and labels of a validation set from a checkpoint.

    cd DisCo
    python export_embed.py -a resnet18 --pretrained ../ckpt/checkpoint_0199.pth.tar \
        --name student_disco /path/to/data

writes ../results/embeddings/<name>_embed.npy (N x D float32, the backbone's
pooled features), <name>_labels.npy (N int64) and classes.txt, which
draw.py and data/cal_mi.py read. Any of our checkpoints works: MoCo-v2
pretraining, DisCo, SwAV or linear evaluation. See docs/analysis.md.
"""

import os
from pathlib import Path

from selfsup.analysis import embeddings
from selfsup.analysis.export import export_checkpoint
from selfsup.cli.flags import add_unsafe_load_arg, default_data
from selfsup.core import checks
from selfsup.core.errors import UserError, cli_main
from selfsup.core.files import check_name, refuse_overwriting
from selfsup.models.backbones import check_image_size

REPO = Path(__file__).resolve().parents[1]  # this script's checkout: where results/ goes
OUTPUTS = (embeddings.EMBED_SUFFIX, embeddings.LABELS_SUFFIX)


def build_parser():
    p = checks.FlagParser(description="Embeddings + labels of an image set from a checkpoint's backbone")
    p.add_argument(
        "data",
        metavar="DIR",
        nargs="?",
        default=None,
        help="folder with val/ (see --split), or an ImageFolder tree itself (default: $DISCO_DATA or data/builtin)",
    )
    p.add_argument("-a", "--arch", default="resnet18", help="backbone of the checkpoint (resnet18)")
    p.add_argument(
        "--pretrained", required=True, metavar="PATH", help="pretraining, DisCo, SwAV or linear-eval checkpoint"
    )
    p.add_argument("--name", default=None, help="file prefix (default: the arch)")
    p.add_argument(
        "--out", default=str(REPO / "results" / "embeddings"), help="output folder (default: results/embeddings)"
    )
    p.add_argument("--split", default="val", help="sub-folder of DIR to embed (val)")
    p.add_argument(
        "--image-size", type=int, default=None, help="evaluation crop (default: the checkpoint's image_size, else 224)"
    )
    p.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="keep the first N images of each class (default: all)"
    )
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("-j", "--workers", type=int, default=4)
    p.add_argument("--gpu", type=int, default=None, help="GPU id (default: GPU 0 if there is one, else CPU)")
    return add_unsafe_load_arg(p)


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    data = args.data or default_data(__file__)
    if args.batch_size < 1:
        raise UserError(f"-b/--batch-size {args.batch_size}: expected a positive number")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images {args.max_images}: expected a positive number")
    if args.image_size is not None:
        checks.at_least(args.image_size, 1, "--image-size", "a positive number of pixels")
        check_image_size(args.arch, args.image_size, None)  # None: either stem (the checkpoint's)
    checks.at_least(args.workers, 0, "-j/--workers", "0 or more")
    if args.gpu is not None:
        checks.at_least(args.gpu, 0, "--gpu", "a GPU index >= 0")
    checks.output_dir(args.out, "--out")  # before the embedding pass, not after it
    name = check_name(args.arch.replace("/", "_") if args.name is None else args.name, "--name", args.out, OUTPUTS)
    for written in [name + suffix for suffix in OUTPUTS] + [embeddings.CLASSES_FILE]:  # never the file read
        refuse_overwriting(os.path.join(args.out, written), [("the --pretrained checkpoint", args.pretrained)])
    device = f"cuda:{args.gpu}" if args.gpu is not None else None
    workers = max(0, min(args.workers, os.cpu_count() or 1))
    e_path, l_path, n, dim = export_checkpoint(
        args.arch,
        args.pretrained,
        data,
        args.out,
        name,
        split=args.split,
        image_size=args.image_size,
        batch_size=args.batch_size,
        workers=workers,
        device=device,
        max_per_class=args.max_images,
    )
    print(f"=> {n} images, {dim}-d: wrote {e_path} and {l_path}")


if __name__ == "__main__":
    main()
