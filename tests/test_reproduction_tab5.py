"""The tab5 section of Reproduction.md, verbatim, for one epoch on tiny data:
`--nproc_per_node=8` becomes 2 CPU processes (gloo), the data path the tiny
set, and small crops / few prototypes / a short queue are appended."""

import os
import socket

import torch
from conftest import REPO, reproduction_commands, run, with_overrides

from selfsup.models.swav import SwAVModel, official_state_dict

COMMANDS = reproduction_commands("tab5")
TINY_SWAV = (
    "--epochs 1 --batch_size 4 --size_crops 16 8 --small_images true --nmb_prototypes 30 "
    "--queue_length 16 --epoch_queue_starts 0 --workers 0 --print_freq 2"
)
TINY_EVAL = "--epochs 1 --batch_size 16 --image_size 16 --workers 0 --print_freq 2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env():
    # torch.distributed.launch reads its flags' defaults from PET_* variables: a free port per run.
    return {"PET_MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}


def tab5(cmd, data, extra, replacements=()):
    return with_overrides(
        cmd,
        data,
        extra,
        [("--nproc_per_node=8", "--nproc_per_node=2"), ("/dev/shm/train", os.path.join(data, "train")), *replacements],
    )


def test_section_is_the_original():
    assert COMMANDS[0] == "cd swav-master"
    scripts = [c.split()[4] for c in COMMANDS[1:]]
    assert scripts == ["main_swav.py", "eval_linear.py", "main_swav_distill.py"]
    assert all("--nproc_per_node=8" in c for c in COMMANDS[1:])
    assert "--arch efficientb0" in COMMANDS[1] and "--nmb_crops 2 6" in COMMANDS[1]


def test_swav_then_linear_eval_verbatim(tiny_data, tmp_path):
    dump = tmp_path / "ckpt"
    cmd = tab5(COMMANDS[1], tiny_data, f"{TINY_SWAV} --dump_path {dump}")
    result = run(cmd, cwd="swav-master", env=launch_env())
    assert result.returncode == 0, result.stdout[-3000:]
    log = open(os.path.join(REPO, "swav-master", "logs", "std.log")).read()
    assert "2 process(es) on cpu" in log and "Epoch: [0]" in log
    ckpt = torch.load(dump / "checkpoints" / "ckp-0.pth", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "efficientb0" and "module.conv_stem.weight" in ckpt["state_dict"]
    assert (dump / "queue0.pth").exists() and (dump / "queue1.pth").exists()

    wanted = "/path/to/ckpt/checkpoints/ckp-199.pth"
    assert wanted in COMMANDS[2]
    cmd = tab5(
        COMMANDS[2],
        tiny_data,
        f"{TINY_EVAL} --dump_path {tmp_path / 'linear'}",
        [(wanted, str(dump / "checkpoints" / "ckp-0.pth"))],
    )
    result = run(cmd, cwd="swav-master", env=launch_env())
    assert result.returncode == 0, result.stdout[-3000:]
    assert " * Acc@1 " in result.stdout and "small_images=True" in result.stdout
    assert (tmp_path / "linear" / "checkpoint.pth.tar").exists()


def test_swav_distill_verbatim(tiny_data, tmp_path):
    # The released SwAV ResNet-50 as a plain state dict with `module.` keys, 3000 prototypes.
    teacher = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.manual_seed(0)
    torch.save(official_state_dict(SwAVModel("resnet50", nmb_prototypes=3000)), teacher)
    dump = tmp_path / "ckpt"
    cmd = tab5(
        COMMANDS[3],
        tiny_data,
        f"{TINY_SWAV} --dump_path {dump}",
        [("/path/to/swav_800ep_pretrain.pth.tar", str(teacher))],
    )
    result = run(cmd, cwd="swav-master", env=launch_env())
    assert result.returncode == 0, result.stdout[-3000:]
    assert "frozen teacher resnet50" in result.stdout and "(raw embedding)" in result.stdout and "MSE" in result.stdout
    rows = open(dump / "metrics.csv").read().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    loss, swav, mse = (float(first[header.index(k)]) for k in ("loss", "loss_swav", "loss_mse"))
    assert mse > 0
    # The original's loss = (swav summed over the two crops for assignment + MSE) / 2 (epoch means of it).
    assert abs(loss - (swav + mse / 2)) <= 1e-4 * abs(loss)
    assert (dump / "checkpoints" / "ckp-0.pth").exists()
