"""moco/main_moco.py's own defaults, as the original's: --resume ./ckpt (a
killed command, rerun as it was, continues from its newest checkpoint) and
the 456 px crops of efficientb5."""

import os
import re

import pytest
import torch
from conftest import run
from moco_scripts import main_moco

from selfsup.core.errors import UserError
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco

FLAGS = (
    "-a resnet18 --mlp --aug-plus --cos --moco-t 0.2 -b 8 --moco-k 24 --image-size 16 --small-images "
    "-j 0 -p 100 --seed 3 --epochs 4"
)


def command(data, ckpt_dir, extra=""):
    return f"python3 main_moco.py {FLAGS} {extra} --ckpt-dir {ckpt_dir} {data}"


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_rerun_of_a_killed_command_resumes_and_ends_as_an_uninterrupted_run(tiny_data, tmp_path):
    straight = run(command(tiny_data, tmp_path / "straight"), cwd="moco")
    assert straight.returncode == 0, straight.stdout[-2000:]
    assert "no checkpoint found" in straight.stdout

    # The same command in another folder, killed with SIGKILL in its third
    # epoch (SELFSUP_DEBUG_KILL: the run kills itself there, so no signal races it).
    folder = tmp_path / "killed"
    killed = run(command(tiny_data, folder), cwd="moco", env={"SELFSUP_DEBUG_KILL": "2:1"})
    assert killed.returncode in (-9, 128 + 9), killed.stdout[-2000:]
    left = sorted(f for f in os.listdir(folder) if f.startswith("checkpoint_") and f.endswith(".pth.tar"))
    assert left == ["checkpoint_0001.pth.tar"], left  # epoch 1's, the newest before the kill
    killed_at = int(re.search(r"checkpoint_(\d+)", left[-1]).group(1)) + 1

    rerun = run(command(tiny_data, folder), cwd="moco")
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert f"=> loaded checkpoint '{folder / left[-1]}' (epoch {killed_at})" in rerun.stdout
    assert "Epoch: [0]" not in rerun.stdout and "Epoch: [3]" in rerun.stdout
    a, b = weights(tmp_path / "straight" / "checkpoint_0003.pth.tar"), weights(folder / "checkpoint_0003.pth.tar")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pretrain(data, ckpt_dir, extra=()):
    args = main_moco.parse_args([*FLAGS.split(), "--epochs", "1", *extra, "--ckpt-dir", str(ckpt_dir), data])
    return launch(lambda a: run_pretraining(a, build_moco), args)


def test_resume_empty_starts_from_scratch(tiny_data, tmp_path, capsys):
    pretrain(tiny_data, tmp_path)
    capsys.readouterr()
    pretrain(tiny_data, tmp_path, ["--resume", ""])
    out = capsys.readouterr().out
    assert "loaded checkpoint" not in out and "Epoch: [0]" in out


def test_a_checkpoint_of_another_arch_in_the_folder_is_one_clear_error(tiny_data, tmp_path):
    pretrain(tiny_data, tmp_path)
    with pytest.raises(UserError, match=r"holds arch 'resnet18', not -a resnet34.*--resume ''"):
        pretrain(tiny_data, tmp_path, ["-a", "resnet34"])


def test_crop_size_follows_the_arch_as_in_the_original():
    # orig:moco/main_moco.py:176-190: img_size 224, 456 for efficientb5.
    for arch, size in [("efficientb5", 456), ("efficientb0", 224), ("resnet50", 224), ("mobilenetv3", 224)]:
        assert main_moco.parse_args(["-a", arch, "x"]).image_size == size, arch
    assert main_moco.parse_args(["-a", "efficientb5", "--image-size", "32", "x"]).image_size == 32
