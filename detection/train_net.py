#!/usr/bin/env python3
"""Fine-tune a converted MoCo / DisCo ResNet in detectron2 (R-C4) and evaluate on VOC / COCO.

  python3 train_net.py --config-file configs/pascal_voc_R_50_C4_24k_moco.yaml --num-gpus 8 \
      --resume MODEL.RESNETS.DEPTH 34 MODEL.RESNETS.RES2_OUT_CHANNELS 64

Datasets come from $DETECTRON2_DATASETS (VOC2007/, VOC2012/, coco/); the configs read
the converted weights from ./output.pkl (override with MODEL.WEIGHTS PATH).
--num-gpus 0 runs on the CPU; so does --num-gpus 1 on a machine without CUDA.
configs/pascal_voc_R_50_C4_24k_moco.yaml is what the original's VOC run effectively used;
configs/pascal_voc_R_50_C4_24k_moco_intended.yaml is MoCo's protocol (docs/detection.md).
"""

from selfsup.core.errors import cli_main
from selfsup.detection.cli import check_gpus, get_parser


@cli_main
def run():
    args = get_parser().parse_args()
    check_gpus(args)  # before the (slow) detectron2 import
    print("Command Line Args:", args, flush=True)
    from selfsup.detection.train import main  # imports detectron2 (optional, slow)

    main(args)


if __name__ == "__main__":
    run()
