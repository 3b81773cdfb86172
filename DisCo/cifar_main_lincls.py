#!/usr/bin/env python3
"""Linear transfer to CIFAR-10/100 (Fig6) with a frozen pretrained backbone.
DIR holds cifar-10-batches-py/ or cifar-100-python/ (or their .tar.gz)."""
import functools

from selfsup import cli
from selfsup.errors import cli_main
from selfsup.launch import launch
from selfsup.lincls import cifar_datasets, run_lincls


def parse_args(argv=None):
    p = cli.lincls_parser("CIFAR linear evaluation", lr=1e-3, epochs=120, schedule=(), gamma=0.1)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.set_defaults(print_freq=1)
    return cli.finish_lincls(p.parse_args(argv))


@cli_main
def main(argv=None):
    launch(functools.partial(run_lincls, build_datasets=cifar_datasets), parse_args(argv))


if __name__ == "__main__":
    main()
