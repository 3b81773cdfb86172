#!/usr/bin/env python3
"""Linear transfer to CIFAR-10/100 (Fig6) with a frozen pretrained backbone.
DIR holds cifar-10-batches-py/ or cifar-100-python/ (or their .tar.gz)."""
from selfsup.lincls import cifar_datasets, lincls_script


def add_cifar(p):
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.set_defaults(lr=1e-3, epochs=120, schedule=[], print_freq=1)


parse_args, main = lincls_script("CIFAR linear evaluation", build_datasets=cifar_datasets, extra_args=add_cifar)

if __name__ == "__main__":
    main()
