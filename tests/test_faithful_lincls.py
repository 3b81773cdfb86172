"""The linear evaluations compute the original's learning rates, CIFAR
resizing and --resume FOLDER (DisCo-pytorch at 1d732c8; issue 12).

Every expected value below is computed here from the original's code as
quoted in the comments, not by calling the project's schedule code."""

import contextlib
import importlib.util
import io
import math
import os

import numpy as np
import pytest
import torch
from conftest import REPO, run
from layouts import pretend_official_cifar, write_cifar
from PIL import Image

from selfsup.core.errors import UserError
from selfsup.engine.optim import epoch_lr

ELEVEN = [5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 80]
SCRIPTS = [
    "moco/main_lincls.py",
    "DisCo/main_lincls.py",
    "DisCo/yt_main_lincls.py",
    "DisCo/main_lincls_semi.py",
    "DisCo/cifar_main_lincls.py",
]


def load(relpath):
    name = "faithful_" + relpath.replace("/", "_")[:-3]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_count_lr(base, epoch, schedule):
    """orig:moco/main_lincls.py:516-526 (and moco/yt_main_lincls_schedule.py:518-528)."""
    lr = base
    for milestone in schedule:
        if len(schedule) == 2:
            lr *= 0.1 if epoch >= milestone else 1.0
        elif len(schedule) == 11:
            lr *= 0.5 if epoch >= milestone else 1.0
    return lr


def halving_lr(base, epoch, schedule):
    """orig:DisCo/main_lincls.py:515-519, main_lincls_semi.py:524-528, cifar_main_lincls.py:584-588."""
    lr = base
    for milestone in schedule:
        lr *= 0.5 if epoch >= milestone else 1.0
    return lr


# script -> (the original's default --lr, --epochs, --schedule, its lr rule)
ORIGINAL = {
    "moco/main_lincls.py": (30.0, 100, ELEVEN, by_count_lr),  # orig:moco/main_lincls.py:47, 56, 58
    "DisCo/main_lincls.py": (30.0, 100, ELEVEN, halving_lr),  # orig:DisCo/main_lincls.py:48, 57, 59
    "DisCo/yt_main_lincls.py": (30.0, 100, [60, 80], by_count_lr),  # orig:moco/yt_main_lincls_schedule.py:58
    "DisCo/main_lincls_semi.py": (30.0, 100, [60, 80], halving_lr),  # orig:DisCo/main_lincls_semi.py:58
    "DisCo/cifar_main_lincls.py": (1e-3, 120, [], halving_lr),  # orig:DisCo/cifar_main_lincls.py:55-66
}


def lrs(args):
    """The lr our run_lincls sets at each epoch of the parsed run."""
    return [epoch_lr(args.lr, e, args.epochs, args.cos, args.schedule, args.gamma) for e in range(args.epochs)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_default_schedule_is_the_originals(script, tmp_path):
    base, epochs, schedule, rule = ORIGINAL[script]
    args = load(script).parse_args([str(tmp_path)])
    assert (args.lr, args.epochs, list(args.schedule)) == (base, epochs, schedule)
    assert lrs(args) == pytest.approx([rule(base, e, schedule) for e in range(epochs)], rel=1e-12)


def test_moco_default_halves_eleven_times(tmp_path):
    args = load("moco/main_lincls.py").parse_args(["--lr", "3.0", str(tmp_path)])
    expected = [3.0 * 0.5 ** sum(e >= m for m in ELEVEN) for e in range(100)]
    assert lrs(args) == pytest.approx(expected, rel=1e-12)
    assert lrs(args)[99] == pytest.approx(3.0 / 2**11)


@pytest.mark.parametrize("script", ["moco/main_lincls.py", "DisCo/yt_main_lincls.py"])
@pytest.mark.parametrize("schedule", [[60, 80], [30, 60, 90], ELEVEN, [50]])
def test_moco_factor_follows_the_number_of_milestones(script, schedule, tmp_path):
    args = load(script).parse_args([str(tmp_path), "--lr", "3.0", "--schedule", *map(str, schedule)])
    assert lrs(args) == pytest.approx([by_count_lr(3.0, e, schedule) for e in range(100)], rel=1e-12)


def test_moco_60_80_steps_tenfold_and_three_milestones_do_not_decay(tmp_path):
    main_lincls = load("moco/main_lincls.py")
    two = lrs(main_lincls.parse_args([str(tmp_path), "--lr", "3.0", "--schedule", "60", "80"]))
    assert (two[59], two[60], two[79], two[80]) == pytest.approx((3.0, 0.3, 0.3, 0.03))
    three = lrs(main_lincls.parse_args([str(tmp_path), "--lr", "3.0", "--schedule", "30", "60", "90"]))
    assert three == [3.0] * 100


@pytest.mark.parametrize("script", SCRIPTS)
def test_explicit_gamma_wins(script, tmp_path):
    args = load(script).parse_args(["--lr", "1.0", "--gamma", "0.2", str(tmp_path), "--schedule", "10", "20", "30"])
    got = lrs(args)
    assert (got[9], got[10], got[20], got[30]) == pytest.approx((1.0, 0.2, 0.04, 0.008))


def test_semi_halves_at_60_and_80(tmp_path):
    got = lrs(load("DisCo/main_lincls_semi.py").parse_args(["--learning-rate", "3.0", str(tmp_path)]))
    assert (got[0], got[59], got[60], got[79], got[80], got[99]) == pytest.approx((3, 3, 1.5, 1.5, 0.75, 0.75))


def test_cifar_given_schedule_halves(tmp_path):
    got = lrs(load("DisCo/cifar_main_lincls.py").parse_args([str(tmp_path), "--lr", "3", "--schedule", "40", "80"]))
    assert (got[39], got[40], got[80], got[119]) == pytest.approx((3, 1.5, 0.75, 0.75))


def test_cos_ignores_the_schedule(tmp_path):
    # The demo's `--lr 0.05 --cos` (tools/demo.py): a half cosine over --epochs.
    got = lrs(load("moco/main_lincls.py").parse_args(["--lr", "0.05", "--cos", "--epochs", "6", str(tmp_path)]))
    assert got == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(6)], rel=1e-12)


def cifar_sets(tmp_path, size, monkeypatch):
    root = tmp_path / "cifar"
    _, test, folder = write_cifar(str(root), "cifar10", n_train=10, n_test=5)
    pretend_official_cifar(monkeypatch, str(root / folder), "cifar10")  # the fakes stand for the authors' files
    cifar = load("DisCo/cifar_main_lincls.py")
    from selfsup.engine.lincls import cifar_datasets

    train_set, test_set = cifar_datasets(cifar.parse_args(["--image-size", str(size), str(root)]))
    return train_set, test_set, test


def test_cifar_transforms_are_bicubic(tmp_path, monkeypatch):
    train_set, test_set, _ = cifar_sets(tmp_path, 224, monkeypatch)
    crop = train_set.transform.transforms[0]
    assert type(crop).__name__ == "RandomResizedCrop" and crop.size == (224, 224)
    assert crop.interpolation.value == "bicubic"
    assert type(train_set.transform.transforms[1]).__name__ == "RandomHorizontalFlip"
    resize, centre = test_set.transform.transforms[:2]
    assert type(resize).__name__ == "Resize" and resize.interpolation.value == "bicubic"
    assert type(centre).__name__ == "CenterCrop" and centre.size == (224, 224)


def test_cifar_eval_pixels_are_a_pil_bicubic_resize(tmp_path, monkeypatch):
    size = 56
    _, test_set, raw = cifar_sets(tmp_path, size, monkeypatch)
    img = Image.fromarray(raw["data"][2].reshape(3, 32, 32).transpose(1, 2, 0))
    up = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float64) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = torch.from_numpy(((up - mean) / std).transpose(2, 0, 1))
    got = test_set[2][0].double()
    assert got.shape == (3, size, size)
    assert torch.allclose(got, expected, atol=1e-5)
    bilinear = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float64) / 255.0
    assert not np.allclose(up, bilinear, atol=1e-3)  # the comparison can tell the two apart


TINY = "-a resnet18 -b 30 --image-size 16 -j 0 -p 100 --seed 0"


def test_resume_folder_reads_its_checkpoint(tiny_data, tmp_path):
    from selfsup.engine.lincls import run_lincls
    from selfsup.engine.runtime import launch

    # The first run in-process (quicker); the resumed one through the command line.
    launch(
        run_lincls,
        load("moco/main_lincls.py").parse_args(
            TINY.split() + ["--epochs", "1", "--ckpt-dir", str(tmp_path / "a"), tiny_data]
        ),
    )
    saved = torch.load(tmp_path / "a" / "checkpoint.pth.tar", weights_only=False)
    # lr 0: the resumed epoch leaves the classifier as it was loaded.
    second = run(
        f"python3 moco/main_lincls.py {TINY} --lr 0 --epochs 2 --resume {tmp_path / 'a'} "
        f"--ckpt-dir {tmp_path / 'b'} {tiny_data}"
    )
    assert second.returncode == 0, second.stdout[-2000:]
    assert f"=> resumed '{tmp_path / 'a' / 'checkpoint.pth.tar'}' (epoch 1)" in second.stdout
    rows = open(tmp_path / "b" / "metrics.csv").read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1"]
    resumed = torch.load(tmp_path / "b" / "checkpoint.pth.tar", weights_only=False)
    assert resumed["epoch"] == 2
    for k in ("module.fc.weight", "module.fc.bias"):
        assert torch.equal(resumed["state_dict"][k], saved["state_dict"][k]), k


def test_resume_folder_without_checkpoint_starts_from_scratch(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    main_lincls = load("moco/main_lincls.py")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args = main_lincls.parse_args(["--resume", str(empty), str(tmp_path)])
    assert args.resume == "" and f"=> no checkpoint found at '{empty}'" in out.getvalue()
    with pytest.raises(UserError, match="evaluate"), contextlib.redirect_stdout(io.StringIO()):
        main_lincls.parse_args(["-e", "--resume", str(empty), str(tmp_path)])


def test_resume_file_is_kept(tmp_path):
    f = tmp_path / "mine.pth.tar"
    f.write_bytes(b"")
    assert load("DisCo/main_lincls.py").parse_args(["--resume", str(f), str(tmp_path)]).resume == str(f)
