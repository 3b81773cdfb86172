#!/usr/bin/env python3
"""Convert a MoCo / DisCo (or linear-eval) ResNet checkpoint into a detectron2 pickle.

  python3 convert-pretrain-to-detectron2.py CKPT ./output.pkl

Keeps the student (encoder_q) backbone, drops the projection head / classifier,
renames to detectron2's ResNet and prints what was kept. ResNet-18/34: res5 is not
transferred (R-C4 builds it of bottleneck blocks in the ROI head).
"""

from selfsup.cli.flags import add_unsafe_load_arg
from selfsup.core.checks import FlagParser
from selfsup.core.errors import cli_main
from selfsup.detection.convert import convert_file


@cli_main
def run():
    parser = FlagParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="checkpoint written by main_moco.py / DisCo main.py")
    parser.add_argument("output", help="detectron2 pickle to write (e.g. ./output.pkl)")
    add_unsafe_load_arg(parser)
    args = parser.parse_args()
    conv = convert_file(args.input, args.output)
    print(conv.report())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run()
