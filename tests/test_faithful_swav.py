"""The SwAV testbed computes what the original swav-master/ computed:
main_swav_distill.py's loss with its raw (un-normalised) teacher, and
eval_linear.py's normalisation, RegLog head and lr schedule. Every expected
value is computed here from the original's formulas, not by the code under test."""

import csv
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from conftest import REPO
from PIL import Image

from selfsup.core.errors import UserError
from selfsup.engine import swav_eval
from selfsup.methods.swav import build_swav, load_distill_teacher
from selfsup.models.swav import SwAVModel, official_state_dict


def _script(name):
    spec = importlib.util.spec_from_file_location(f"faithful_{name}", os.path.join(REPO, "swav-master", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- main_swav_distill.py: loss = (swav_sum + mse) / len(crops_for_assign) ------

TINY_MODEL = [
    "--arch",
    "resnet18",
    "--teacher_arch",
    "resnet18",
    "--small_images",
    "true",
    "--hidden_mlp",
    "16",
    "--feat_dim",
    "8",
    "--nmb_prototypes",
    "5",
    "--size_crops",
    "16",
    "8",
    "--nmb_crops",
    "2",
    "1",
    "--min_scale_crops",
    "0.14",
    "0.05",
    "--max_scale_crops",
    "1",
    "0.14",
]


def original_sinkhorn(out, epsilon=0.05, iterations=3):
    """distributed_sinkhorn of the original, one process, in fp64."""
    q = torch.exp(out.double() / epsilon).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def original_distill_loss(student, source_teacher, crops, crops_for_assign=(0, 1), temperature=0.1):
    """orig:swav-master/main_swav_distill.py train(): the student's multi-res
    forward, the raw teacher embedding, the swapped losses summed over
    crops_for_assign, + MSE, the whole divided by len(crops_for_assign)."""
    bs, n = crops[0].shape[0], len(crops)
    big = student.backbone(torch.cat(crops[:2]))  # equal resolutions share one backbone call
    small = student.backbone(crops[2])
    z = F.normalize(student.projection_head(torch.cat((big, small))), dim=1).double()
    scores = z @ student.prototypes.weight.double().t()
    with torch.no_grad():
        feats = torch.cat([source_teacher.backbone(c) for c in crops])  # eval mode: batching is irrelevant
        t = source_teacher.projection_head(feats).double()  # no normalize
    loss = 0
    for crop_id in crops_for_assign:
        q = original_sinkhorn(scores[bs * crop_id : bs * (crop_id + 1)].detach())
        subloss = 0
        for v in [v for v in range(n) if v != crop_id]:
            x = scores[bs * v : bs * (v + 1)] / temperature
            subloss = subloss - torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss = loss + subloss / (n - 1)
    mse = ((z - t) ** 2).sum() / z.numel()
    return (loss + mse) / len(crops_for_assign), loss, mse, t


def batch_loss(student, teacher, crops, args):
    """(loss, SwAV part, MSE part) of SwAV + DisCo on one batch of crops."""
    out = build_swav(args, student, teacher)(crops)
    assert set(out) == {"loss", "loss_swav", "loss_mse"}
    return out["loss"], out["loss_swav"], out["loss_mse"]


def test_distill_loss_with_a_raw_teacher_is_the_originals(tmp_path):
    torch.manual_seed(0)
    source = SwAVModel("resnet18", hidden_mlp=16, feat_dim=8, nmb_prototypes=5, small_images=True).eval()
    with torch.no_grad():
        source.projection_head[3].weight.mul_(16.0)  # raw embeddings far from unit norm
    path = tmp_path / "teacher.pth"
    torch.save(official_state_dict(source), path)
    args = _script("main_swav_distill").parse_args(
        TINY_MODEL + ["--pretrained", str(path), "--data_path", str(tmp_path)]
    )
    assert args.teacher_normalize is False and args.mse_weight == 1.0
    teacher = load_distill_teacher(args)
    student = SwAVModel("resnet18", hidden_mlp=16, feat_dim=8, nmb_prototypes=5, small_images=True).train()
    student.normalize_prototypes()
    crops = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16), torch.randn(4, 3, 8, 8)]

    loss, swav, mse = batch_loss(student, teacher, crops, args)
    expected, swav_sum, expected_mse, t = original_distill_loss(student, source, crops)
    norms = t.norm(dim=1)
    assert norms.min() > 2  # far from unit norm: a normalised teacher would give another MSE
    torch.testing.assert_close(mse.double(), expected_mse, rtol=1e-5, atol=0)
    torch.testing.assert_close(swav.double(), swav_sum / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    # Not our former default (normalised teacher, swav + 1 x MSE) ...
    former = swav_sum / 2 + ((F.normalize(t, dim=1) - F.normalize(student.embed(crops).double(), dim=1)) ** 2).mean()
    assert abs(loss.item() - former.item()) > 1e-3
    # ... which stays two flags away.
    args = _script("main_swav_distill").parse_args(
        TINY_MODEL
        + ["--pretrained", str(path), "--data_path", str(tmp_path), "--teacher_normalize", "true", "--mse_weight", "2"]
    )
    loss2, _, _ = batch_loss(student, load_distill_teacher(args), crops, args)
    torch.testing.assert_close(loss2.double(), former, rtol=1e-5, atol=0)


# -- eval_linear.py: normalisation and RegLog ------------------------------------


def test_eval_linear_normalisation_is_swavs():
    mean, std = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)  # fb-swav:eval_linear.py:114-116
    train, val = swav_eval.linear_transforms(224)
    img = Image.new("RGB", (300, 260), (200, 100, 50))
    for tf in (train, val):
        x = tf(img)
        assert x.shape == (3, 224, 224)
        for c, v in enumerate((200, 100, 50)):
            torch.testing.assert_close(x[c], torch.full((224, 224), (v / 255 - mean[c]) / std[c]))
    kinds = [type(t) for t in val.transforms]
    assert kinds[:2] == [T.Resize, T.CenterCrop] and val.transforms[0].size == 256
    assert [type(t) for t in train.transforms][:2] == [T.RandomResizedCrop, T.RandomHorizontalFlip]
    assert train.transforms[0].scale == (0.08, 1.0)


def _eval_args(*extra):
    return _script("eval_linear").parse_args(["--data_path", "/nowhere", *extra])


def test_use_bn_adds_batchnorm_only_without_global_pooling():
    args = _eval_args()
    assert args.global_pooling is True and args.use_bn is False and args.pooled_bn is False
    # Global pooling: --use_bn true changes nothing (the original's RegLog ignores it).
    head = swav_eval.make_head(_eval_args("--use_bn", "true", "--arch", "resnet18"), None, 512, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())
    x = torch.randn(3, 512)
    torch.testing.assert_close(head(x), x @ head.linear.weight.t() + head.linear.bias)
    assert head.linear.bias.abs().sum() == 0 and 0.005 < head.linear.weight.std() < 0.015
    # Ours: BatchNorm1d on the pooled feature, one flag away.
    head = swav_eval.make_head(_eval_args("--pooled_bn", "true", "--arch", "resnet18"), None, 512, 10)
    assert isinstance(head.bn, nn.BatchNorm1d)

    # No global pooling, 224 px ResNet-50: AvgPool2d(6, stride 1) of the 7x7 map, BatchNorm2d(2048), 8192 inputs.
    args = _eval_args("--arch", "resnet50", "--global_pooling", "false", "--use_bn", "true")
    model, width, _ = swav_eval.load_frozen_backbone(args)
    head = swav_eval.make_head(args, swav_eval.ResNetFeatureMap(model).eval(), width, 1000)
    assert head.linear.in_features == 8192 and isinstance(head.bn, nn.BatchNorm2d) and head.bn.num_features == 2048
    # Its forward on a small map, by hand: 6x6 windows, BN over (N, H, W), channel-major flatten.
    head = swav_eval.LinearHead(3, 4, use_bn=True, global_pooling=False, map_size=(7, 7)).train()
    fmap = torch.randn(5, 3, 7, 7)
    pooled = torch.stack(
        [torch.stack([fmap[:, :, i : i + 6, j : j + 6].mean(dim=(2, 3)) for j in range(2)], -1) for i in range(2)], -2
    )  # (5, 3, 2, 2)
    mu = pooled.mean(dim=(0, 2, 3), keepdim=True)
    var = pooled.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = ((pooled - mu) / torch.sqrt(var + 1e-5)).reshape(5, 12)
    torch.testing.assert_close(head(fmap), normed @ head.linear.weight.t() + head.linear.bias)
    head = swav_eval.LinearHead(3, 4, use_bn=False, global_pooling=False, map_size=(7, 7))
    torch.testing.assert_close(head(fmap), pooled.reshape(5, 12) @ head.linear.weight.t() + head.linear.bias)


def test_global_pooling_false_needs_a_resnet():
    with pytest.raises(UserError) as exc:
        _eval_args("--arch", "efficientb0", "--global_pooling", "false")
    assert "\n" not in str(exc.value) and "--global_pooling" in str(exc.value)


# -- eval_linear.py: the lr of every epoch ---------------------------------------


def official_lr(epoch, args):
    """lr during `epoch` of torch's MultiStepLR / CosineAnnealingLR as the
    original sets them up, stepped once after each epoch (closed forms)."""
    if args["scheduler_type"] == "step":
        return args["lr"] * args["gamma"] ** sum(epoch >= m for m in args["decay_epochs"])
    lo, hi, n = args["final_lr"], args["lr"], args["epochs"]
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * epoch / n))


@pytest.mark.parametrize(
    "flags, schedule",
    [
        ([], dict(scheduler_type="cosine", lr=0.3, final_lr=0.0)),
        (["--final_lr", "0.01", "--lr", "0.2"], dict(scheduler_type="cosine", lr=0.2, final_lr=0.01)),
        (
            ["--scheduler_type", "step", "--decay_epochs", "1", "3", "--gamma", "0.5"],
            dict(scheduler_type="step", lr=0.3, decay_epochs=[1, 3], gamma=0.5),
        ),
    ],
)
def test_eval_linear_lr_at_every_epoch(tiny_data, tmp_path, torch_one_thread, flags, schedule):
    epochs = 5
    dump = tmp_path / "linear"
    _script("eval_linear").main(
        [
            "--data_path",
            tiny_data,
            "--arch",
            "resnet18",
            "--small_images",
            "true",
            "--image_size",
            "16",
            "--batch_size",
            "64",
            "--workers",
            "0",
            "--epochs",
            str(epochs),
            "--dump_path",
            str(dump),
            "--device",
            "cpu",
            *flags,
        ]
    )
    with open(dump / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    got = np.array([float(r["lr"]) for r in rows])
    expected = np.array([official_lr(e, dict(schedule, epochs=epochs)) for e in range(epochs)])
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
