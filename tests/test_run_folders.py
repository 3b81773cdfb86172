"""What a run leaves in its folder when it stops on bad input, and what an
evaluation folder refuses (docs/resume.md, docs/bad-input.md)."""

import hashlib
import os
import shutil

import torch
import torchvision
from conftest import run

MOCO = (
    "python3 main_moco.py -a resnet18 -b 30 --moco-k 64 --image-size 16 --small-images -j 0 -p 1 "
    "--bn-splits 2 --seed 0 "
)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_corrupt_image_met_mid_run_stops_it_and_leaves_the_last_checkpoint_intact(tiny_data, tmp_path):
    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    shutil.copytree(tiny_data, data)
    r = run(MOCO + f"--epochs 1 --ckpt-dir {ckpt} {data}", cwd="moco", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    last = ckpt / "checkpoint_0000.pth.tar"
    before = digest(last)

    first_class = sorted(os.listdir(data / "train"))[0]
    victim = sorted((data / "train" / first_class).iterdir())[-1]
    victim.write_bytes(b"not an image any more")
    # The same folder with --epochs 2 resumes at epoch 1 (the default --resume
    # is the folder) and meets the image during that epoch.
    r = run(MOCO + f"--epochs 2 --ckpt-dir {ckpt} {data}", cwd="moco", timeout=300)
    assert r.returncode == 2, r.stdout[-2000:]
    assert "=> loaded checkpoint" in r.stdout and "(epoch 1)" in r.stdout
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(victim) in errors[0] and "unreadable image" in errors[0], r.stdout[-2000:]
    assert "Traceback" not in r.stdout

    assert digest(last) == before
    assert sorted(os.listdir(ckpt)) == ["checkpoint_0000.pth.tar", "metrics.csv", "tb"]  # no lock, no temporaries
    state = torch.load(last, weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


def swav_layout_resnet18(path, seed):
    """A ResNet-18 trunk under the `module.` prefix, as SwAV's releases are laid out."""
    torch.manual_seed(seed)
    trunk = torchvision.models.resnet18()
    state = {f"module.{k}": v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, path)


def test_eval_linear_refuses_a_dump_path_holding_another_pretrained_models_evaluation(tiny_data, tmp_path):
    a, b, dump = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "dump"
    swav_layout_resnet18(a, 0)
    swav_layout_resnet18(b, 1)
    cmd = (
        f"python3 eval_linear.py --arch resnet18 --image_size 16 --batch_size 8 --workers 0 --data_path {tiny_data} "
        f"--dump_path {dump} --pretrained "
    )
    r = run(cmd + f"{a} --epochs 1", cwd="swav-master", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    first = digest(dump / "checkpoint.pth.tar")
    metrics = (dump / "metrics.csv").read_text()

    # Extending the run with another model: the old evaluation would be
    # restarted and its accuracy reported for b.
    r = run(cmd + f"{b} --epochs 2", cwd="swav-master", timeout=300)
    assert r.returncode == 2, r.stdout[-2000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--pretrained" in errors[0] and str(a) in errors[0] and str(b) in errors[0], errors
    assert "use another --dump_path" in errors[0]
    assert digest(dump / "checkpoint.pth.tar") == first and (dump / "metrics.csv").read_text() == metrics

    # The same model continues from the saved epoch.
    r = run(cmd + f"{a} --epochs 2", cwd="swav-master", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "restarting from" in r.stdout and "at epoch 1" in r.stdout
