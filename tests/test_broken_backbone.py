"""A linear evaluation whose frozen backbone is broken (exploded BatchNorm
statistics, NaN weights) names the checkpoint's state at its first batch,
not the learning rate; pretraining warns when its statistics explode."""

import torch
import torch.nn as nn
from conftest import run
from layouts import moco_v2_checkpoint

from selfsup.models import health

LINCLS = "python3 moco/main_lincls.py -a resnet18 -b 8 --image-size 16 -j 0 -p 1 --epochs 1 --resume '' "


def broken_checkpoint(path, **values):
    torch.manual_seed(0)
    ckpt = moco_v2_checkpoint("resnet18", queue=64)
    for key, value in values.items():
        ckpt["state_dict"][f"module.encoder_q.{key.replace('__', '.')}"].fill_(value)
    torch.save(ckpt, path)


def one_error(result):
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stdout[-2000:]
    assert "Traceback" not in result.stdout
    return errors[0]


def test_exploded_bn_statistics_are_named_not_the_lr(tiny_data, tmp_path):
    bad = tmp_path / "exploded.pth.tar"
    # Statistics that exploded with scales to match: the features overflow.
    broken_checkpoint(bad, bn1__running_var=2.8e16, bn1__weight=3e38)
    line = one_error(run(LINCLS + f"--pretrained {bad} --ckpt-dir {tmp_path / 'lin'} {tiny_data}"))
    assert "loss became" in line and str(bad) in line, line
    assert "running variances reach 2.8e+16 (bn1.running_var)" in line, line
    assert "no --lr can help" in line and "lower --lr" not in line, line


def test_nan_weights_of_the_backbone_are_named(tiny_data, tmp_path):
    bad = tmp_path / "nan.pth.tar"
    broken_checkpoint(bad, layer2__0__conv1__weight=float("nan"))
    line = one_error(run(LINCLS + f"--pretrained {bad} --ckpt-dir {tmp_path / 'lin'} {tiny_data}"))
    assert "layer2.0.conv1.weight holds NaN or inf" in line and "lower --lr" not in line, line


def test_a_classifier_that_diverges_on_a_healthy_backbone_still_blames_the_lr(tiny_data, tmp_path):
    good = tmp_path / "good.pth.tar"
    torch.manual_seed(0)
    torch.save(moco_v2_checkpoint("resnet18", queue=64), good)
    result = run(LINCLS.replace("--epochs 1", "--epochs 1 --lr 1e38") + f"--pretrained {good} "
                 f"--ckpt-dir {tmp_path / 'lin'} {tiny_data}")  # fmt: skip
    if result.returncode == 0:  # finite but huge weights on some platforms: nothing to check here
        return
    line = one_error(result)
    assert "lower --lr" in line and "not usable" not in line, line


def test_bn_warning_fires_on_exploded_statistics_only():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    assert health.bn_warning(net, "the query encoder") is None
    assert health.state_problem(net) is None
    net[4].running_var[2] = 3e12
    line = health.bn_warning(net, "the query encoder")
    assert line.startswith("=> warning:") and "reach 3e+12 (4.running_var)" in line and "--bn-splits" in line
    assert "4.running_var" in health.state_problem(net)
    net[0].weight.data[0, 0, 0, 0] = float("inf")
    assert health.state_problem(net) == "its 0.weight holds NaN or inf values"
    assert health.state_problem(net, skip_prefix="0.") is not None  # the variance is still exploded
