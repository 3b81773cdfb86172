#!/usr/bin/env python3
"""Linear transfer to CIFAR-10/100 (Fig6) with a frozen pretrained backbone.
DIR holds cifar-10-batches-py/ or cifar-100-python/ (or their .tar.gz).
Images are resized with bicubic interpolation, as in the original."""
from selfsup.engine.lincls import cifar_datasets, lincls_script


def add_cifar(p):
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.set_defaults(lr=1e-3, epochs=120, schedule=[], print_freq=1)


# Bicubic resizing (in cifar_datasets) and x0.5 at each --schedule milestone, as
# the original (orig:DisCo/cifar_main_lincls.py:297-337, 584-590).
parse_args, main = lincls_script("CIFAR linear evaluation", gamma=0.5, build_datasets=cifar_datasets,
                                 extra_args=add_cifar)

if __name__ == "__main__":
    main()
