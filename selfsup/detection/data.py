"""Dataset registration: detectron2's builtin VOC and COCO names under a root.

detectron2 registers ``voc_2007_trainval``, ``coco_2017_train`` ... under
``$DETECTRON2_DATASETS`` when ``detectron2.data`` is first imported.
:func:`register_builtin_datasets` runs detectron2's own registration functions
again for another root (replacing those names), so a process that imported
detectron2 earlier, such as a test, can point the same names at another tree.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import builtin

from selfsup.core.errors import UserError


def dataset_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


@contextlib.contextmanager
def _replacing_registrations():
    original = DatasetCatalog.register

    def register(name, func):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        original(name, func)

    DatasetCatalog.register = register  # instance attribute shadows the method
    try:
        yield
    finally:
        del DatasetCatalog.register


def register_builtin_datasets(root: str | None = None) -> str:
    """(Re-)register detectron2's builtin VOC and COCO dataset names under ``root``
    (default: ``$DETECTRON2_DATASETS``, else ``datasets``)."""
    root = dataset_root() if root is None else os.path.expanduser(root)
    with _replacing_registrations():
        builtin.register_all_coco(root)
        builtin.register_all_pascal_voc(root)
    return root


def check_datasets(names: Iterable[str]) -> None:
    """One-line error if a registered VOC / COCO dataset's files are missing."""
    for name in names:
        if name not in DatasetCatalog:
            raise UserError(
                f"dataset '{name}' is not registered; the configs use detectron2's "
                f"builtin names (voc_2007_trainval, coco_2017_train, ...)"
            )
        meta = MetadataCatalog.get(name)
        kind = meta.get("evaluator_type", None)
        if kind == "pascal_voc":
            split_file = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
            if not os.path.isfile(split_file):
                raise UserError(
                    f"dataset '{name}': {split_file} not found (set "
                    f"DETECTRON2_DATASETS to the folder holding VOC2007/ and VOC2012/)"
                )
        elif kind == "coco":
            json_file = meta.get("json_file", None)
            if json_file and "://" not in json_file and not os.path.isfile(json_file):
                raise UserError(
                    f"dataset '{name}': {json_file} not found (set "
                    f"DETECTRON2_DATASETS to the folder holding coco/annotations/)"
                )
