"""What a run leaves in its folder when it stops on bad input, and what an
evaluation folder refuses (docs/resume.md, docs/bad-input.md)."""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import torch
import torchvision
from conftest import REPO, fast_python, run

MOCO = (
    "python3 main_moco.py -a resnet18 -b 30 --moco-k 64 --image-size 16 --small-images -j 0 -p 1 "
    "--bn-splits 2 --seed 0 "
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mid_epoch_checkpoints(folder):
    """Complete mid-epoch checkpoints (not a `.tmp<PID>` being written)."""
    names = os.listdir(folder) if folder.exists() else []
    return [f for f in names if "_iter" in f and f.endswith(".pth.tar")]


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


def test_sigterm_to_the_parent_of_a_multiprocessing_run_stops_every_process_and_a_rerun_ends_as_uninterrupted(
    tiny_data, tmp_path
):
    # `kill PID` of the --multiprocessing-distributed parent (what a scheduler
    # that signals only the job's main process does) reaches both gloo workers.
    # The parent starts from the pre-imported server (SIGTERM to it reaches the
    # script: the client passes it on); its gloo workers are fresh interpreters.
    python, env = fast_python(dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))

    def command(folder):
        return [*python, *MOCO.split()[1:], "--epochs", "2", "-b", "16", "--moco-k", "32",
                "--multiprocessing-distributed", "--cpu-procs", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                "--ckpt-dir", str(folder), tiny_data]  # fmt: skip

    whole = subprocess.run(command(tmp_path / "whole"), cwd=os.path.join(REPO, "moco"), env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]

    folder, log_path = tmp_path / "cut", tmp_path / "cut.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(folder), cwd=os.path.join(REPO, "moco"), env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 240
        while not re.search(r"Epoch: \[0\]\[\s*1/", open(log_path).read()):
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGTERM)  # the parent only
        proc.wait(timeout=240)
    text = open(log_path).read()
    assert proc.returncode == 0, text[-3000:]
    assert "=> SIGTERM: saved" in text and "rerun the same command to continue" in text
    saved = [f for f in os.listdir(folder) if f.startswith("checkpoint_")]
    # Saved at the next iteration boundary after the signal reached the
    # workers (mid-epoch or an epoch's end: either resumes exactly), not after the run.
    assert len(saved) == 1 and saved[0] != "checkpoint_0001.pth.tar", saved

    again = subprocess.run(command(folder), cwd=os.path.join(REPO, "moco"), env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "=> loaded checkpoint" in again.stdout, again.stdout[-2000:]
    a = torch.load(folder / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "whole" / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gpu_aug_run_killed_after_a_mid_epoch_checkpoint_continues_from_it_exactly(tiny_data, tmp_path):
    # --gpu-aug (batched augmentation on the device; here the CPU) keeps the
    # PIL loader's iteration boundaries: --save-freq and a rerun after kill -9.
    def command(folder):
        return [sys.executable, *MOCO.split()[1:], "--epochs", "2", "-b", "10", "--gpu-aug", "--save-freq", "2",
                "--ckpt-dir", str(folder), tiny_data]  # fmt: skip

    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    moco = os.path.join(REPO, "moco")
    whole = subprocess.run(command(tmp_path / "whole"), cwd=moco, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]

    folder, log_path = tmp_path / "cut", tmp_path / "cut.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(folder), cwd=moco, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while not mid_epoch_checkpoints(folder):
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # the file is complete once visible: it is renamed into place
        proc.wait(timeout=60)
    assert mid_epoch_checkpoints(folder), os.listdir(folder)
    again = subprocess.run(command(folder), cwd=moco, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "iteration" in again.stdout, again.stdout[-2000:]
    assert sorted(os.listdir(folder)) == ["checkpoint_0001.pth.tar", "metrics.csv", "tb"]  # no temporaries left
    a = torch.load(folder / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "whole" / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
