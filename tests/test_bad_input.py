"""Bad input gives one line naming the culprit, and exit status 2."""
import os
import shutil

import pytest

from conftest import run

MOCO = "python3 main_moco.py -a resnet18 -b 4 --moco-k 16 --image-size 16 --small-images -j 0 --epochs 1 "
LINCLS = "python3 main_lincls.py -a resnet18 -b 4 --image-size 16 -j 0 --epochs 1 "


def check_error(result, *needles):
    assert result.returncode == 2, result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture
def broken_data(tiny_data, tmp_path):
    def make(kind):
        root = tmp_path / kind
        shutil.copytree(tiny_data, root)
        train = root / "train"
        if kind == "empty":
            shutil.rmtree(train)
            train.mkdir()
        elif kind == "empty_class":
            (train / "zz_empty").mkdir()
        elif kind == "corrupt":
            first = sorted(os.listdir(train))[0]
            victim = sorted((train / first).iterdir())[0]
            victim.write_bytes(b"this is not a png")
            return str(root), str(victim)
        return str(root), str(train)
    return make


def test_missing_data_folder(tmp_path):
    check_error(run(MOCO + str(tmp_path / "nope"), cwd="moco"), "nope", "does not exist")


def test_empty_data_folder(broken_data):
    root, train = broken_data("empty")
    check_error(run(MOCO + root, cwd="moco"), train, "no class sub-folders")


def test_class_folder_without_images(broken_data):
    root, _ = broken_data("empty_class")
    check_error(run(MOCO + root, cwd="moco"), "zz_empty", "holds no images")


def test_unreadable_image(broken_data):
    root, victim = broken_data("corrupt")
    check_error(run(MOCO + "-b 60 --moco-k 64 " + root, cwd="moco"), victim, "unreadable image")


def test_missing_checkpoint(tiny_data):
    check_error(run(LINCLS + f"--pretrained /no/such.pth.tar {tiny_data}", cwd="moco"), "/no/such.pth.tar")


def test_corrupt_checkpoint(tiny_data, tmp_path):
    bad = tmp_path / "checkpoint_0000.pth.tar"
    bad.write_bytes(b"garbage")
    check_error(run(LINCLS + f"--pretrained {bad} {tiny_data}", cwd="moco"), str(bad), "not a readable")


@pytest.mark.parametrize("flags,needle", [
    ("--hidden 512", "needs --mlp"),
    ("--mlp --resume x.pth --resume-ckpt", "choose one"),
    ("--moco-k 2", "--moco-k 2"),
    ("-a resnet9000", "known:"),
    ("--epochs 1 --start-epoch 3", "nothing to train"),
])
def test_conflicting_flags(tiny_data, flags, needle):
    check_error(run(MOCO + flags + " " + tiny_data, cwd="moco"), needle)


def test_resume_of_missing_file(tiny_data):
    check_error(run(MOCO + f"--resume /no/ckpt.pth.tar {tiny_data}", cwd="moco"), "/no/ckpt.pth.tar")


def test_gpu_flag_without_gpu(tiny_data):
    check_error(run(MOCO + f"--gpu 0 {tiny_data}", cwd="moco", env={"CUDA_VISIBLE_DEVICES": ""}), "--gpu 0")
