"""Pretraining and linear evaluation end to end on tiny data (in-process)."""

import os

import pytest
import torch
from moco_scripts import main_lincls, main_moco

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.data.builtin import prepare
from selfsup.engine.lincls import run_lincls
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco

PRETRAIN = [
    "-a",
    "resnet18",
    "--mlp",
    "--aug-plus",
    "--cos",
    "--moco-t",
    "0.2",
    "-b",
    "8",
    "--moco-k",
    "24",
    "--image-size",
    "16",
    "--small-images",
    "-j",
    "0",
    "-p",
    "100",
    "--seed",
    "3",
]


def pretrain(args_list):
    args = main_moco.parse_args(args_list)
    return launch(lambda a: run_pretraining(a, build_moco), args)


def test_checkpoint_layout_is_the_originals(tiny_data, tmp_path):
    pretrain(PRETRAIN + ["--epochs", "2", "--ckpt-dir", str(tmp_path), tiny_data])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_0001.pth.tar", "metrics.csv", "tb"]  # previous deleted
    c = torch.load(tmp_path / "checkpoint_0001.pth.tar", weights_only=False)
    assert c["epoch"] == 2 and c["arch"] == "resnet18" and "optimizer" in c
    keys = c["state_dict"].keys()
    assert {
        "module.queue",
        "module.queue_ptr",
        "module.encoder_q.fc.0.weight",
        "module.encoder_k.conv1.weight",
        "module.encoder_q.layer4.1.bn2.running_mean",
    } <= set(keys)
    rows = open(tmp_path / "metrics.csv").read().splitlines()
    assert rows[0].startswith("epoch,lr,loss") and len(rows) == 3


def test_resumed_run_equals_uninterrupted_run(tiny_data, tmp_path):
    straight = pretrain(PRETRAIN + ["--epochs", "2", "--ckpt-dir", str(tmp_path / "a"), tiny_data])
    pretrain(PRETRAIN + ["--epochs", "1", "--ckpt-dir", str(tmp_path / "b"), tiny_data])
    # "--epochs 2" with the epoch-1 checkpoint: the lr schedule of a 2-epoch run
    # differs from the 1-epoch one only from epoch 1 on, which is what resumes.
    resumed = pretrain(PRETRAIN + ["--epochs", "2", "--ckpt-dir", str(tmp_path / "b"), "--resume-ckpt", tiny_data])
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    a = torch.load(tmp_path / "a" / "checkpoint_0001.pth.tar", weights_only=False)["optimizer"]
    b = torch.load(tmp_path / "b" / "checkpoint_0001.pth.tar", weights_only=False)["optimizer"]
    for i in a["state"]:
        assert torch.equal(a["state"][i]["momentum_buffer"], b["state"][i]["momentum_buffer"])
    assert [r.split(",")[0] for r in open(tmp_path / "b" / "metrics.csv").read().splitlines()] == ["epoch", "0", "1"]


def test_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint_0000.pth.tar")
    ck.save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):  # the writer hands torch.save its open partial file
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint_0000.pth.tar"]  # the partial file went with the exception


def test_linear_eval_trains_only_the_classifier(tiny_data, tmp_path):
    pretrain(PRETRAIN + ["--epochs", "1", "--ckpt-dir", str(tmp_path / "pre"), tiny_data])
    ckpt = str(tmp_path / "pre" / "checkpoint_0000.pth.tar")
    args = main_lincls.parse_args(
        [
            "-a",
            "resnet18",
            "--lr",
            "3.0",
            "-b",
            "8",
            "--epochs",
            "2",
            "--image-size",
            "16",
            "-j",
            "0",
            "-p",
            "100",
            "--pretrained",
            ckpt,
            "--ckpt-dir",
            str(tmp_path / "lin"),
            tiny_data,
        ]
    )
    result = launch(run_lincls, args)
    assert 0.0 <= result["acc1"] <= 100.0
    best = torch.load(tmp_path / "lin" / "model_best.pth.tar", weights_only=False)
    pre = torch.load(ckpt, weights_only=False)["state_dict"]
    # Frozen: every backbone tensor equals the pretraining encoder_q's.
    for k, v in best["state_dict"].items():
        name = k[len("module.") :]
        if not name.startswith("fc."):
            assert torch.equal(v, pre["module.encoder_q." + name]), name
    assert best["state_dict"]["module.fc.weight"].shape == (10, 512)
    # The classifier did learn: it is no longer its N(0, 0.01) init.
    assert best["state_dict"]["module.fc.weight"].std() > 0.02


def test_pretrained_of_another_arch_is_a_one_line_error(tiny_data, tmp_path):
    pretrain(PRETRAIN + ["--epochs", "1", "--ckpt-dir", str(tmp_path), tiny_data])
    args = main_lincls.parse_args(
        [
            "-a",
            "resnet34",
            "--epochs",
            "1",
            "-j",
            "0",
            "--pretrained",
            str(tmp_path / "checkpoint_0000.pth.tar"),
            tiny_data,
        ]
    )
    with pytest.raises(UserError, match="does not match -a resnet34.*trained as 'resnet18'"):
        launch(run_lincls, args)


def test_linear_eval_saves_and_restores_the_grad_scaler(tmp_path):
    """fp16 (a grad scaler): the checkpoint holds the scaler's state and a
    rerun continues from it. The planted state is one no fresh scaler has
    (growth interval 777, not 2000; scale 1024, below what two steps of
    halving from 65536 reach), so only a restored scaler saves it again."""
    data = str(tmp_path / "data")
    prepare(data, train_per_class=1, val_per_class=1, size=16, seed=1)  # 10 + 10 images: one batch each
    folder = tmp_path / "lin"

    def lincls(epochs):
        # 8 px: fp16 convolutions are slow on a CPU.
        return launch(
            run_lincls,
            main_lincls.parse_args(
                [
                    "-a",
                    "resnet18",
                    "--small-images",
                    "-b",
                    "10",
                    "--image-size",
                    "8",
                    "-j",
                    "0",
                    "-p",
                    "100",
                    "--seed",
                    "0",
                    "--lr",
                    "0.1",
                    "--precision",
                    "fp16",
                    "--epochs",
                    str(epochs),
                    "--ckpt-dir",
                    str(folder),
                    data,
                ]
            ),
        )

    lincls(1)
    path = folder / "checkpoint.pth.tar"
    saved = torch.load(path, weights_only=True)
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer"} <= set(saved)  # the original's keys
    assert set(saved["scaler"]) >= {"scale", "growth_interval", "_growth_tracker"}
    saved["scaler"].update(scale=1024.0, growth_interval=777, _growth_tracker=0)
    torch.save(saved, path)
    lincls(2)  # reruns in the same --ckpt-dir resume its checkpoint.pth.tar
    resumed = torch.load(path, weights_only=True)
    assert resumed["epoch"] == 2
    assert resumed["scaler"]["growth_interval"] == 777
    assert resumed["scaler"]["scale"] <= 1024.0
