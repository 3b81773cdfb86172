"""detectron2 training / evaluation for the R-C4 transfer configs (detection/train_net.py)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator

from selfsup.core.errors import UserError
from selfsup.detection import modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from selfsup.detection.cli import check_gpus, get_parser  # noqa: F401
from selfsup.detection.data import check_datasets, dataset_root, register_builtin_datasets

logger = logging.getLogger("selfsup.detection")

_NORM_KEYS = (("RESNETS", "NORM"), ("ROI_BOX_HEAD", "NORM"), ("ROI_MASK_HEAD", "NORM"), ("FPN", "NORM"))


class Trainer(DefaultTrainer):
    """DefaultTrainer with the VOC and COCO evaluators chosen by dataset metadata."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        raise UserError(
            f"DATASETS.TEST '{dataset_name}': no evaluator for evaluator_type {kind!r} (expected a VOC or COCO dataset)"
        )


def use_cpu(num_gpus: int) -> bool:
    return num_gpus == 0 or not torch.cuda.is_available()


def build_cfg(args: argparse.Namespace) -> CfgNode:
    """Config from --config-file and the trailing KEY VALUE overrides, adapted to the run:
    CPU device when no GPU is used, plain BN instead of SyncBN for a single process."""
    if not args.config_file or not os.path.isfile(args.config_file):
        raise UserError(f"--config-file {args.config_file!r}: file not found")
    cfg = get_cfg()
    try:
        cfg.merge_from_file(args.config_file)
    except Exception as exc:
        raise UserError(
            f"--config-file {args.config_file}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None
    try:
        cfg.merge_from_list(args.opts)
    except Exception as exc:  # KeyError for unknown keys, AssertionError for odd length ...
        raise UserError(
            f"config overrides {' '.join(args.opts)}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        ) from None
    if use_cpu(args.num_gpus):
        cfg.MODEL.DEVICE = "cpu"
    if args.num_gpus * args.num_machines <= 1:
        for node, key in _NORM_KEYS:
            if cfg.MODEL[node][key] == "SyncBN":
                cfg.MODEL[node][key] = "BN"
    if cfg.MODEL.RESNETS.DEPTH in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        raise UserError(
            f"MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH} needs "
            f"MODEL.RESNETS.RES2_OUT_CHANNELS 64 (got "
            f"{cfg.MODEL.RESNETS.RES2_OUT_CHANNELS})"
        )
    cfg.freeze()
    return cfg


def _has_last_checkpoint(cfg):
    return os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def check_inputs(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Data and weights must exist before any process starts."""
    names = list(cfg.DATASETS.TEST) if args.eval_only else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    check_datasets(names)
    weights = cfg.MODEL.WEIGHTS
    resuming = args.resume and _has_last_checkpoint(cfg)
    if weights and "://" not in weights and not resuming and not os.path.isfile(weights):
        raise UserError(
            f"MODEL.WEIGHTS {weights}: file not found (run "
            f"convert-pretrain-to-detectron2.py CKPT {weights} first, or pass "
            f"MODEL.WEIGHTS PATH)"
        )


def worker(args: argparse.Namespace) -> Any:
    """One training / evaluation process (launched once per GPU)."""
    register_builtin_datasets()
    cfg = build_cfg(args)
    default_setup(cfg, args)
    logger.info("datasets under %s; device %s", dataset_root(), cfg.MODEL.DEVICE)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # the evaluation hook at the end of training keeps its results here
    return getattr(trainer, "_last_eval_results", None)


def main(args: argparse.Namespace) -> Any:
    """Check flags, data and weights in this process, then launch the workers."""
    check_gpus(args)
    register_builtin_datasets()
    cfg = build_cfg(args)
    check_inputs(cfg, args)
    if args.num_gpus <= 1 and args.num_machines <= 1:
        return worker(args)
    return launch(
        worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
