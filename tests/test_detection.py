"""Detection transfer: converter, detectron2 loading, tiny VOC/COCO training on CPU."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
import torchvision

from selfsup.core.errors import UserError
from selfsup.detection.convert import convert_file, convert_state_dict, rename_key

REPO = Path(conftest.REPO)  # a worker's own copy under pytest-xdist
DETECTION = REPO / "detection"

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

# Overrides that make a run tiny: small images, few RoIs, 2 iterations, batch 2.
TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "96",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "96",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.BASE_LR",
    "0.001",
    "SOLVER.STEPS",
    "(1,)",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "32",
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "16",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "16",
    "TEST.DETECTIONS_PER_IMAGE",
    "20",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "TEST.PRECISE_BN.NUM_ITER",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SOLVER.CHECKPOINT_PERIOD",
    "100000",
]


def moco_checkpoint(arch, path, mlp=True, seed=0):
    """A main_moco.py-style checkpoint with random weights (no downloads)."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(num_classes=128)
    sd = net.state_dict()
    if mlp:  # projection MLP as main_moco.py --mlp builds it: fc.0 / fc.2
        dim = sd["fc.weight"].shape[1]
        del sd["fc.weight"], sd["fc.bias"]
        sd.update(
            {
                "fc.0.weight": torch.randn(dim, dim),
                "fc.0.bias": torch.zeros(dim),
                "fc.2.weight": torch.randn(128, dim),
                "fc.2.bias": torch.zeros(128),
            }
        )
    state = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in sd.items()})
    state["module.queue"] = torch.randn(128, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}, path)
    return net.state_dict()


# ---------------------------------------------------------------- converter (torch only)


def test_rename_key():
    assert rename_key("conv1.weight") == "stem.conv1.weight"
    assert rename_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert rename_key("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert rename_key("layer4.2.conv2.weight") == "res5.2.conv2.weight"
    assert rename_key("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert rename_key("layer3.0.downsample.1.weight") == "res4.0.shortcut.norm.weight"


def test_convert_keeps_student_drops_head_and_basic_res5(tmp_path):
    ckpt, out = tmp_path / "checkpoint_0199.pth.tar", tmp_path / "output.pkl"
    ref = moco_checkpoint("resnet18", ckpt)
    conv = convert_file(str(ckpt), str(out))
    data = pickle.load(open(out, "rb"))
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["matching_heuristics"] is True
    model = data["model"]
    assert not any(k.startswith(("fc", "res5", "encoder", "queue")) for k in model)
    assert conv.arch == "resnet18" and conv.stages == ["stem", "res2", "res3", "res4"]
    np.testing.assert_array_equal(
        model["res3.0.shortcut.norm.running_mean"], ref["layer2.0.downsample.1.running_mean"].numpy()
    )
    n_expected = sum(1 for k in ref if not k.startswith(("fc.", "layer4.")))
    assert len(model) == n_expected
    assert "res5 starts fresh" in conv.report()
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file


def test_convert_linear_eval_and_plain_state_dict(tmp_path):
    net = torchvision.models.resnet50()
    sd = net.state_dict()
    a = convert_state_dict({"state_dict": {f"module.{k}": v for k, v in sd.items()}})
    b = convert_state_dict(sd)
    assert a.arch == b.arch == "resnet50" and "res5" in a.stages
    assert sorted(a.model) == sorted(b.model)
    assert "res5.2.conv3.norm.weight" in a.model


@pytest.mark.parametrize(
    "obj,msg",
    [
        (
            {"arch": "efficientnet_b0", "state_dict": {"module.encoder_q.conv_stem.weight": torch.zeros(1)}},
            "not a ResNet",
        ),
        ({"state_dict": {"module.encoder_q.conv_stem.weight": torch.zeros(1)}}, "ResNet"),
        ([1, 2], "expected a dict"),
        (
            {
                "arch": "resnet50",
                "state_dict": {
                    f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()
                },
            },
            "'arch' says resnet50",
        ),
    ],
)
def test_convert_errors(obj, msg):
    with pytest.raises(UserError, match=msg):
        convert_state_dict(obj, where="ckpt.pth.tar")


def test_convert_output_must_be_a_file_name(tmp_path):
    moco_checkpoint("resnet18", tmp_path / "ckpt.pth.tar", mlp=False)
    with pytest.raises(UserError, match="is a folder"):
        convert_file(str(tmp_path / "ckpt.pth.tar"), str(tmp_path))
    with pytest.raises(UserError, match="checkpoint file not found"):
        convert_file(str(tmp_path / "nope.pth.tar"), str(tmp_path / "o.pkl"))


def test_convert_script_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    torch.save({"arch": "mobilenetv3_large_100", "state_dict": {"module.encoder_q.x": torch.zeros(1)}}, bad)
    r = subprocess.run(
        [sys.executable, str(DETECTION / "convert-pretrain-to-detectron2.py"), str(bad), str(tmp_path / "o.pkl")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a ResNet" in r.stderr
    assert not (tmp_path / "o.pkl").exists()


# ---------------------------------------------------------------- detectron2


@pytest.fixture
def d2():
    """Skip (only) the detectron2 tests when detectron2 is not installed
    (bash detection/install_detectron2.sh installs it)."""
    return pytest.importorskip("detectron2")


needs_d2 = pytest.mark.usefixtures("d2")


def build_model(config, opts):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model as d2_build

    import selfsup.detection.modeling  # noqa: F401

    cfg = get_cfg()
    cfg.merge_from_file(str(DETECTION / "configs" / config))
    cfg.merge_from_list(opts + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    return d2_build(cfg)


@needs_d2
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_converted_pickle_loads_into_rc4_model(tmp_path, arch):
    """detectron2's own load report: no missing backbone key, nothing unexpected."""
    from detectron2.checkpoint import DetectionCheckpointer

    ckpt, out = tmp_path / "ckpt.pth.tar", tmp_path / "output.pkl"
    ref = moco_checkpoint(arch, ckpt)
    conv = convert_file(str(ckpt), str(out))
    model = build_model("pascal_voc_R_50_C4_24k_moco.yaml", conv.overrides().split())
    checkpointer = DetectionCheckpointer(model)
    reports = []
    checkpointer._log_incompatible_keys = reports.append  # capture detectron2's report
    checkpointer.load(str(out))
    assert len(reports) == 1
    rep = reports[0]
    assert rep.unexpected_keys == [] and rep.incorrect_shapes == []
    assert [k for k in rep.missing_keys if k.startswith("backbone.")] == []
    res5_missing = [k for k in rep.missing_keys if k.startswith("roi_heads.res5.")]
    if conv.block == "bottleneck":  # all of res5 transferred except the extra norm
        assert all(k.startswith("roi_heads.res5.norm.") for k in res5_missing)
        assert torch.equal(model.roi_heads.res5[2].conv3.weight, ref["layer4.2.conv3.weight"])
    else:  # res5 of bottleneck blocks starts fresh
        assert "roi_heads.res5.0.conv1.weight" in res5_missing
    assert torch.equal(model.backbone.res4[1].conv2.weight, ref["layer3.1.conv2.weight"])
    assert torch.equal(model.backbone.stem.conv1.norm.running_var, ref["bn1.running_var"])


def _box_xml(path, name, w, h, objects):
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = name + ".jpg"
    size = ET.SubElement(root, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    for cls, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, val in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
            ET.SubElement(box, tag).text = str(val)
    ET.ElementTree(root).write(path)


def _image(path, w, h, boxes, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = rng.integers(60, 255, 3)
    Image.fromarray(img).save(path)


def _layout(i, w=96, h=64):
    """Five boxes in a row for image i."""
    return [(4 + 18 * j, 8 + (i % 3) * 4, 18 + 18 * j, 40 + (i % 3) * 4) for j in range(5)]


def make_voc_tree(root, n_images=4):
    """VOC2007 (trainval, test) and VOC2012 (trainval) in the layout detectron2 reads."""
    for year in ("2007", "2012"):
        base = Path(root) / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        ids = []
        for i in range(n_images):
            name = f"{year}_{i:06d}"
            boxes = _layout(i)
            classes = VOC_CLASSES[(5 * i) % 20 : (5 * i) % 20 + 5]
            _image(base / "JPEGImages" / f"{name}.jpg", 96, 64, boxes, seed=i)
            _box_xml(base / "Annotations" / f"{name}.xml", name, 96, 64, zip(classes, boxes))
            ids.append(name)
        splits = ["trainval", "test"] if year == "2007" else ["trainval"]
        for split in splits:
            (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def make_coco_tree(root, n_images=2):
    """coco/{train2017,val2017} and their instances json with polygon masks."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    cats = [{"id": c["id"], "name": c["name"], "supercategory": "x"} for c in COCO_CATEGORIES if c["isthing"]]
    base = Path(root) / "coco"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2017", "val2017"):
        (base / split).mkdir(exist_ok=True)
        images, anns = [], []
        for i in range(n_images):
            boxes = _layout(i)
            _image(base / split / f"{i:012d}.jpg", 96, 64, boxes, seed=i)
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 96, "height": 64})
            for j, (x1, y1, x2, y2) in enumerate(boxes):
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cats[(5 * i + j) % 80]["id"],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                        "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]],
                    }
                )
        (base / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )


@needs_d2
def test_tiny_voc_trains_and_evaluates_on_cpu(tmp_path, monkeypatch):
    """Builtin VOC names (detectron2's own registration) under a tiny tree in
    $DETECTRON2_DATASETS: 2 iterations on the CPU, then the VOC07 evaluator."""
    from selfsup.detection.train import get_parser, main

    make_voc_tree(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    ckpt, out = tmp_path / "ckpt.pth.tar", tmp_path / "output.pkl"
    moco_checkpoint("resnet18", ckpt)
    convert_file(str(ckpt), str(out))
    args = get_parser().parse_args(
        [
            "--config-file",
            str(DETECTION / "configs" / "pascal_voc_R_50_C4_24k_moco.yaml"),
            "--num-gpus",
            "1",
            "MODEL.WEIGHTS",
            str(out),
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
    assert 0.0 <= results["bbox"]["AP50"] <= 100.0
    assert (tmp_path / "run" / "model_final.pth").is_file()
    cfg_dump = (tmp_path / "run" / "config.yaml").read_text()
    assert "NORM: BN" in cfg_dump and "DEVICE: cpu" in cfg_dump


def _tab3_workdir(tmp_path, make_tree):
    """A copy of detection/ (scripts + configs) and a dataset tree, like the Tab3 setup."""
    work = tmp_path / "detection"
    work.mkdir()
    for name in ("convert-pretrain-to-detectron2.py", "train_net.py"):
        shutil.copy(DETECTION / name, work / name)
    shutil.copytree(DETECTION / "configs", work / "configs")
    make_tree(tmp_path / "shm")
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(tmp_path / "shm"),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        CUDA_VISIBLE_DEVICES="",
    )

    def run(*argv):
        return subprocess.run([sys.executable, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    return work, run


def _ok(r):
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout + r.stderr


@needs_d2
def test_tab3_voc_commands_verbatim(tmp_path):
    work, run = _tab3_workdir(tmp_path, make_voc_tree)
    moco_checkpoint("resnet34", tmp_path / "checkpoint_0199.pth.tar")
    out = _ok(run("convert-pretrain-to-detectron2.py", str(tmp_path / "checkpoint_0199.pth.tar"), "./output.pkl"))
    assert "resnet34" in out and (work / "output.pkl").is_file()
    cmd = [
        "train_net.py",
        "--config-file",
        "configs/pascal_voc_R_50_C4_24k_moco.yaml",
        "--num-gpus",
        "8",
        "--resume",
        "MODEL.RESNETS.DEPTH",
        "34",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
    ]
    r = run(*cmd)  # verbatim: this machine has no 8 GPUs (CUDA hidden) -> one-line error
    assert r.returncode == 2 and "--num-gpus 8" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    cmd[cmd.index("8")] = "1"
    out = _ok(run(*cmd, *TINY))
    assert "Evaluating voc_2007_test using 2007 metric" in out and "copypaste: AP,AP50,AP75" in out
    final = work / "output" / "pascal_voc_R_50_C4_24k_moco" / "model_final.pth"
    assert final.is_file()
    # --resume with --eval-only picks up the last checkpoint of that run
    out = _ok(run(*cmd[:6], "--eval-only", *cmd[6:], *TINY))
    assert "model_final.pth" in out and "copypaste: AP,AP50,AP75" in out


@needs_d2
def test_tab3_coco_command_verbatim(tmp_path):
    work, run = _tab3_workdir(tmp_path, make_coco_tree)
    moco_checkpoint("resnet18", tmp_path / "checkpoint_0199.pth.tar")
    _ok(run("convert-pretrain-to-detectron2.py", str(tmp_path / "checkpoint_0199.pth.tar"), "./output.pkl"))
    out = _ok(
        run(
            "train_net.py",
            "--config-file",
            "configs/coco_R_50_C4_2x_moco.yaml",
            "--num-gpus",
            "1",
            "--resume",
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            *TINY,
        )
    )
    assert "copypaste: Task: bbox" in out and "copypaste: Task: segm" in out
    assert (work / "output" / "coco_R_50_C4_2x_moco" / "model_final.pth").is_file()


@needs_d2
@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--config-file", "configs/nope.yaml"], "--config-file"),
        (["--config-file", "CFG", "MODEL.NOPE", "1"], "MODEL.NOPE"),
        (["--config-file", "CFG", "MODEL.RESNETS.DEPTH"], "config overrides"),
        (["--config-file", "CFG", "MODEL.RESNETS.DEPTH", "18"], "RES2_OUT_CHANNELS 64"),
        (["--config-file", "CFG"], "MODEL.WEIGHTS ./output.pkl: file not found"),
        (["--config-file", "CFG", "--num-gpus", "-1"], "--num-gpus -1"),
    ],
)
def test_train_net_flag_errors(tmp_path, monkeypatch, argv, msg):
    from selfsup.detection.train import check_gpus, get_parser, main

    make_voc_tree(tmp_path / "datasets")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    monkeypatch.chdir(tmp_path)
    cfg = str(DETECTION / "configs" / "pascal_voc_R_50_C4_24k_moco.yaml")
    args = get_parser().parse_args(["--num-gpus", "0"] + [cfg if a == "CFG" else a for a in argv])
    with pytest.raises(UserError, match=msg):
        check_gpus(args)
        main(args)


@needs_d2
def test_missing_voc_folder_is_a_clear_error(tmp_path, monkeypatch):
    from selfsup.detection.train import get_parser, main

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    args = get_parser().parse_args(
        ["--config-file", str(DETECTION / "configs" / "pascal_voc_R_50_C4_24k_moco.yaml"), "--num-gpus", "1"]
    )
    with pytest.raises(UserError, match="empty/VOC2007/ImageSets/Main/trainval.txt not found"):
        main(args)
