#!/usr/bin/env python3
"""Export the backbone of a checkpoint for use outside this project.

    python tools/export.py runs/demo/student_disco/ckpt/checkpoint_0007.pth.tar --out student.safetensors
    python tools/export.py DisCo-R152-Mob.pth.tar -a mobilenetv3 --out mob.onnx

writes the query backbone only (no key encoder, queue, teacher or
optimiser) under the keys of its library's model, checks the written file
against the checkpoint, and prints the one line that loads it
(docs/export.md).
"""

from selfsup.cli.export_flags import export_parser
from selfsup.core.errors import cli_main
from selfsup.export.exporter import export_checkpoint, summary


@cli_main
def main(argv=None):
    args = export_parser().parse_args(argv)
    result = export_checkpoint(
        args.checkpoint,
        args.out,
        fmt=args.format,
        arch=args.arch,
        with_head=args.with_head,
        image_size=args.image_size,
        force=args.force,
    )
    for line in summary(result):
        print(line, flush=True)


if __name__ == "__main__":
    main()
