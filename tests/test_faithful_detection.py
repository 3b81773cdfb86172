"""The VOC detection configs compute what they claim (docs/detection.md).

pascal_voc_R_50_C4_24k_moco.yaml must give what the original DisCo files gave after
detectron2 merged them. The constants below are the independent record of those
values: written from reading DisCo/detection/{Base-RCNN-C4-BN,pascal_voc_R_50_C4_24k,
pascal_voc_R_50_C4_24k_moco}.yaml of the original, where YAML keeps only the second of
the two top-level MODEL keys of the last file (so its pixel mean/std and STRIDE_IN_1X1
are detectron2's defaults). pascal_voc_R_50_C4_24k_moco_intended.yaml must give
fb-moco's detection/configs/ protocol.
"""

from pathlib import Path

import conftest
import pytest
import torch
import torchvision

REPO = Path(conftest.REPO)  # a worker's own copy under pytest-xdist
CONFIGS = REPO / "detection" / "configs"
FAITHFUL = CONFIGS / "pascal_voc_R_50_C4_24k_moco.yaml"
INTENDED = CONFIGS / "pascal_voc_R_50_C4_24k_moco_intended.yaml"

d2 = pytest.importorskip("detectron2")  # as in test_detection.py: skip only without detectron2

VOC_TRAIN = ("voc_2007_trainval", "voc_2012_trainval")
VOC_TEST = ("voc_2007_test",)
SIZES_FROM_480 = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)

# Shared by both files: the R-C4 layout of detectron2's defaults and MoCo's base file.
RC4_BN = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.RPN.IN_FEATURES": ["res4"],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "MODEL.MASK_ON": False,
    "MODEL.WEIGHTS": "./output.pkl",
    "INPUT.FORMAT": "RGB",
    "INPUT.MIN_SIZE_TEST": 800,
    "DATASETS.TRAIN": VOC_TRAIN,
    "DATASETS.TEST": VOC_TEST,
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.STEPS": (18000, 22000),
}

# What the original DisCo VOC run effectively used.
ORIGINAL = dict(
    RC4_BN,
    **{
        "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],  # detectron2's BGR Caffe means ...
        "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],  # ... and unit std, on RGB input
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
        "SOLVER.IMS_PER_BATCH": 32,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": 48000,
        "SOLVER.WARMUP_ITERS": 200,
        "INPUT.MIN_SIZE_TRAIN": (400,) + SIZES_FROM_480,
        "OUTPUT_DIR": "./output/pascal_voc_R_50_C4_24k_moco",  # ours (original: ../ckpt/)
    },
)

# fb-moco's intended protocol (torchvision-pretrained backbone).
FB_MOCO = dict(
    RC4_BN,
    **{
        "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "SOLVER.IMS_PER_BATCH": 16,
        "SOLVER.BASE_LR": 0.02,
        "SOLVER.MAX_ITER": 24000,
        "SOLVER.WARMUP_ITERS": 100,
        "INPUT.MIN_SIZE_TRAIN": SIZES_FROM_480,
        "OUTPUT_DIR": "./output/pascal_voc_R_50_C4_24k_moco_intended",
    },
)


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def merged(path):
    """What train_net.py's build_cfg does for the Tab3 command (--num-gpus 8: SyncBN kept)."""
    from selfsup.detection.train import build_cfg, get_parser

    return build_cfg(get_parser().parse_args(["--config-file", str(path), "--num-gpus", "8"]))


@pytest.mark.parametrize("path,expected", [(FAITHFUL, ORIGINAL), (INTENDED, FB_MOCO)], ids=["faithful", "intended"])
def test_config_values_key_by_key(path, expected):
    cfg = merged(path)
    wrong = {k: (lookup(cfg, k), v) for k, v in expected.items() if lookup(cfg, k) != v}
    assert wrong == {}, "key: (config gives, expected)"


@pytest.mark.parametrize("path,expected", [(FAITHFUL, ORIGINAL), (INTENDED, FB_MOCO)], ids=["faithful", "intended"])
def test_config_sets_nothing_else(path, expected):
    """Every key not in the record stays at detectron2's default, as in the original."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    defaults = flatten(get_cfg())
    extra = {k: v for k, v in flatten(cfg).items() if k not in expected and v != defaults[k]}
    assert extra == {}


def test_yaml_keeps_the_last_of_two_model_keys(tmp_path):
    """Why the original's first MODEL block had no effect: detectron2's YAML loader keeps
    the later of two equal top-level keys (a loader that rejected duplicates would make
    the faithful config's reasoning wrong)."""
    from detectron2.config import get_cfg

    f = tmp_path / "two_model_keys.yaml"
    f.write_text(
        "MODEL:\n  PIXEL_STD: [2.0, 3.0, 4.0]\n  RESNETS:\n    STRIDE_IN_1X1: False\n"
        "INPUT:\n  FORMAT: RGB\nMODEL:\n  WEIGHTS: last.pkl\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(f))
    assert cfg.MODEL.WEIGHTS == "last.pkl" and cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True


def build(path, opts=()):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import selfsup.detection.modeling  # noqa: F401  (the extra-norm ROI head)

    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    return cfg, build_model(cfg).eval()


def test_faithful_model_normalises_rgb_with_bgr_means(tmp_path):
    """An image read as the config says (RGB) is shifted by the BGR-ordered means and not
    scaled: red loses 103.53, blue 123.675 (the original's effective input)."""
    from detectron2.data.detection_utils import read_image
    from PIL import Image

    cfg, model = build(FAITHFUL, ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    rgb = torch.randint(0, 256, (6, 5, 3), dtype=torch.uint8)
    Image.fromarray(rgb.numpy()).save(tmp_path / "img.png")
    img = read_image(str(tmp_path / "img.png"), format=cfg.INPUT.FORMAT)
    chw = torch.as_tensor(img.transpose(2, 0, 1).copy())
    assert torch.equal(chw[0], rgb[..., 0])  # channel 0 is red
    out = model.preprocess_image([{"image": chw}]).tensor[0]
    expected = rgb.permute(2, 0, 1).float() - torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("path,stride_1x1", [(FAITHFUL, (2, 2)), (INTENDED, (1, 1))], ids=["faithful", "intended"])
def test_converted_resnet50_lands_where_the_config_puts_strides(tmp_path, path, stride_1x1):
    """The converter copies torchvision weights unchanged (no channel flip, as the
    original converter); the faithful config runs them with the stride in the 1x1 conv
    of each first bottleneck (detectron2's default), the intended one in the 3x3 conv."""
    from detectron2.checkpoint import DetectionCheckpointer
    from test_detection import moco_checkpoint

    from selfsup.detection.convert import convert_file

    ckpt, out = tmp_path / "ckpt.pth.tar", tmp_path / "output.pkl"
    ref = moco_checkpoint("resnet50", ckpt)
    convert_file(str(ckpt), str(out))
    _, model = build(path)
    DetectionCheckpointer(model).load(str(out))
    assert torch.equal(model.backbone.stem.conv1.weight, ref["conv1.weight"])
    assert torch.equal(model.backbone.res3[0].conv1.weight, ref["layer2.0.conv1.weight"])
    stride_3x3 = (1, 1) if stride_1x1 == (2, 2) else (2, 2)
    for block in (model.backbone.res3[0], model.backbone.res4[0], model.roi_heads.res5[0]):
        assert block.conv1.stride == stride_1x1 and block.conv2.stride == stride_3x3
    # torchvision's own bottleneck (what pretraining ran) has the stride in the 3x3 conv
    tv = torchvision.models.resnet50().layer2[0]
    assert tv.conv1.stride == (1, 1) and tv.conv2.stride == (2, 2)


def test_faithful_basic_block_backbone_keeps_torchvision_strides():
    """For the ResNet-18/34 students STRIDE_IN_1X1 does not touch the backbone
    (basic blocks stride in their first 3x3 conv, as torchvision); only the fresh
    bottleneck res5 head gets the stride in its 1x1 conv."""
    _, model = build(FAITHFUL, ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    block = model.backbone.res3[0]
    assert block.conv1.kernel_size == (3, 3) and block.conv1.stride == (2, 2)
    assert model.roi_heads.res5[0].conv1.stride == (2, 2)


def test_intended_config_trains_on_tiny_voc(tmp_path, monkeypatch):
    """The intended-protocol file runs end to end like the faithful one
    (test_detection.py trains the faithful file)."""
    from test_detection import TINY, make_voc_tree, moco_checkpoint

    from selfsup.detection.convert import convert_file
    from selfsup.detection.train import get_parser, main

    make_voc_tree(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    moco_checkpoint("resnet18", tmp_path / "ckpt.pth.tar")
    convert_file(str(tmp_path / "ckpt.pth.tar"), str(tmp_path / "output.pkl"))
    args = get_parser().parse_args(
        [
            "--config-file",
            str(INTENDED),
            "--num-gpus",
            "1",
            "MODEL.WEIGHTS",
            str(tmp_path / "output.pkl"),
            "OUTPUT_DIR",
            str(tmp_path / "run"),
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
        ]
        + TINY
    )
    results = main(args)
    assert set(results["bbox"]) == {"AP", "AP50", "AP75"}
    assert "PIXEL_STD:\n  - 58.395" in (tmp_path / "run" / "config.yaml").read_text()
