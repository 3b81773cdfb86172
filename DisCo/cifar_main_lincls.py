#!/usr/bin/env python3
"""Linear transfer to CIFAR-10/100 (Fig6) with a frozen pretrained backbone.
DIR holds cifar-10-batches-py/ or cifar-100-python/ (or their .tar.gz).
Images are resized with bicubic interpolation, as in the original.

The work is done by selfsup.engine.lincls (datasets: cifar_datasets)."""

import functools

from selfsup.cli import flags as cli
from selfsup.core.errors import cli_main
from selfsup.engine.lincls import cifar_datasets, run_lincls
from selfsup.engine.runtime import launch


def parse_args(argv=None):
    # Bicubic resizing (in cifar_datasets) and x0.5 at each --schedule milestone, as
    # the original (orig:DisCo/cifar_main_lincls.py:55-66, 297-337, 584-590).
    p = cli.lincls_parser("CIFAR linear evaluation", lr=1e-3, epochs=120, schedule=(), gamma=0.5)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.set_defaults(print_freq=1)
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(functools.partial(run_lincls, build_datasets=cifar_datasets), parse_args(argv))


if __name__ == "__main__":
    main()
