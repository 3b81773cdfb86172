"""The moco section of Reproduction.md, verbatim, on tiny data for one epoch."""

import os
import re

import pytest
import torch
from conftest import REPO, TINY_LINCLS, TINY_PRETRAIN, reproduction_commands, run, with_overrides

COMMANDS = reproduction_commands("moco")
PAIRS = [(c, COMMANDS[i + 1]) for i, c in enumerate(COMMANDS) if "main_moco.py" in c]


def test_section_has_every_seed_architecture():
    archs = [re.search(r"-a (\S+)", c).group(1) for c, _ in PAIRS]
    assert archs == [
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenetv3",
        "efficientb0",
        "efficientb1",
        "resnet18",
        "resnet34",
    ]
    assert COMMANDS[0] == "cd moco"


@pytest.mark.parametrize("pretrain,lincls", PAIRS, ids=[re.search(r"-a (\S+)", c).group(1) for c, _ in PAIRS])
def test_pretrain_then_linear_eval_verbatim(pretrain, lincls, tiny_data, tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    epochs = int(re.search(r"--epochs (\d+)", pretrain).group(1))
    cmd = with_overrides(pretrain, tiny_data, f"{TINY_PRETRAIN} --ckpt-dir {ckpt_dir}")
    # The Effi-B0 command names no data folder: it falls back to $DISCO_DATA.
    result = run(cmd, cwd="moco", env={"DISCO_DATA": tiny_data})
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Epoch: [0]" in open(os.path.join(REPO, "moco", "logs", "std.log")).read()
    ckpt = ckpt_dir / "checkpoint_0000.pth.tar"
    assert torch.load(ckpt, weights_only=False)["arch"] in pretrain

    # The evaluation command names checkpoint_{epochs-1}: hand it ours.
    wanted = f"/path/to/ckpt/checkpoint_{epochs - 1:04d}.pth.tar"
    assert wanted in lincls
    cmd = with_overrides(lincls, tiny_data, f"{TINY_LINCLS} --ckpt-dir {tmp_path / 'lin'}", [(wanted, str(ckpt))])
    result = run(cmd, cwd="moco")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "sanity check passed" in result.stdout and " * Acc@1 " in result.stdout
