"""Safe to kill (docs/resume.md): real subprocesses interrupted by real
signals (SIGTERM, SIGUSR1, SIGKILL) and rerun must end with the weights of
an uninterrupted run; a folder belongs to one run; a non-finite loss on one
of two gloo processes stops both. Tiny: 16 px, 60 images, resnet18."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, run
from moco_scripts import main_moco

from selfsup.core.errors import UserError
from selfsup.engine import runstate as rs
from selfsup.engine.pretrain import run_pretraining
from selfsup.engine.progress import MetricsWriter
from selfsup.engine.runtime import launch
from selfsup.methods.moco import build_moco

MOCO = (
    "-a resnet18 --mlp --aug-plus --cos --moco-t 0.2 -b 8 --moco-k 24 --image-size 16 --small-images "
    "-j 0 -p 1 --seed 3 --epochs 2"
)
LINCLS = "-a resnet18 -b 8 --image-size 16 -j 0 -p 1 --seed 0 --epochs 2"
SWAV = (
    "--arch resnet18 --small_images true --size_crops 16 8 --nmb_crops 2 2 --min_scale_crops 0.14 0.05 "
    "--max_scale_crops 1 0.14 --nmb_prototypes 30 --workers 0 --print_freq 1 --warmup_epochs 0 --base_lr 0.6 "
    "--final_lr 0.0006 --freeze_prototypes_niters 2 --batch_size 8 --queue_length 96 --epoch_queue_starts 0 "
    "--epochs 2"
)
EPOCH1 = re.compile(r"Epoch: \[1\]\[\s*\d+/")


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same(a, b):
    a, b = state(a), state(b)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]


def no_leftovers(folder):
    left = [f for f in os.listdir(folder) if ".tmp" in f or f == rs.LOCK_NAME or "_iter" in f]
    assert not left, left


def interrupt(argv, cwd, log_path, ready, sig):
    """Start `argv`, send `sig` once ready(log text) holds; (returncode, log)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=os.path.join(REPO, cwd),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1"),
        )
        deadline = time.time() + 240
        while not ready(open(log_path).read()):
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.01)
        os.kill(proc.pid, sig)
        proc.wait(timeout=240)
    return proc.returncode, open(log_path).read()


@pytest.fixture(scope="module")
def moco_reference(tiny_data, tmp_path_factory):
    """One uninterrupted 2-epoch MoCo run, the reference of every test here."""
    folder = tmp_path_factory.mktemp("moco_ref")
    done = run(f"python3 moco/main_moco.py {MOCO} --ckpt-dir {folder} {tiny_data}")
    assert done.returncode == 0, done.stdout[-2000:]
    yield folder / "checkpoint_0001.pth.tar"
    shutil.rmtree(folder, ignore_errors=True)


def test_moco_killed_after_a_mid_epoch_checkpoint_continues_from_it_exactly(tiny_data, tmp_path, moco_reference):
    folder = tmp_path / "run"
    cmd = f"moco/main_moco.py {MOCO} --save-freq 2 --ckpt-dir {folder} {tiny_data}".split()
    mid = folder / "checkpoint_0001_iter000002.pth.tar"
    code, _ = interrupt(cmd, ".", tmp_path / "log", lambda _: mid.exists(), signal.SIGKILL)
    assert code == -signal.SIGKILL
    (folder / ".checkpoint_0000.pth.tar.selfsup-partial.tmp999999").write_bytes(b"half")  # a writer killed mid-write
    rerun = run("python3 " + " ".join(cmd))
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert re.search(
        r"loaded checkpoint '.*checkpoint_0001_iter0000(0[2-9]|1\d)\.pth\.tar' \(epoch 1, iteration", rerun.stdout
    ), rerun.stdout[-2000:]
    assert "Epoch: [0]" not in rerun.stdout
    assert_same(moco_reference, folder / "checkpoint_0001.pth.tar")
    no_leftovers(folder)
    assert [r.split(",")[0] for r in open(folder / "metrics.csv").read().splitlines()[1:]] == ["0", "1"]


def test_disco_sigusr1_saves_exits_0_and_a_rerun_ends_as_uninterrupted(tiny_data, tmp_path, moco_reference):
    teacher = tmp_path / "teacher.pth.tar"
    shutil.copyfile(moco_reference, teacher)
    flags = f"{MOCO} --teacher {teacher} --teacher_arch resnet18 --moco-k 24"
    ref = run(f"python3 DisCo/main.py {flags} --ckpt-dir {tmp_path / 'ref'} {tiny_data}")
    assert ref.returncode == 0, ref.stdout[-2000:]
    cmd = f"DisCo/main.py {flags} --ckpt-dir {tmp_path / 'run'} {tiny_data}".split()
    code, log = interrupt(cmd, ".", tmp_path / "log", EPOCH1.search, signal.SIGUSR1)
    assert code == 0, log[-2000:]
    saved = re.findall(r"=> SIGUSR1: saved '([^']+)' at epoch 1 iteration (\d+)", log)
    assert len(saved) == 1 and os.path.isfile(saved[0][0]), log[-2000:]
    rerun = run("python3 " + " ".join(cmd))
    assert rerun.returncode == 0 and f"(epoch 1, iteration {saved[0][1]})" in rerun.stdout, rerun.stdout[-2000:]
    assert_same(tmp_path / "ref" / "checkpoint_0001.pth.tar", tmp_path / "run" / "checkpoint_0001.pth.tar")
    no_leftovers(tmp_path / "run")

    # Resumed with another teacher: one line naming it, nothing trained.
    other = tmp_path / "other.pth.tar"
    shutil.copyfile(teacher, other)
    again = run(
        f"python3 DisCo/main.py {flags.replace(str(teacher), str(other))} --epochs 3 "
        f"--ckpt-dir {tmp_path / 'run'} {tiny_data}"
    )
    errors = [line for line in again.stdout.splitlines() if line.startswith("error:")]
    assert again.returncode == 2 and len(errors) == 1 and "--teacher" in errors[0] and str(other) in errors[0]
    assert "Epoch: [2]" not in again.stdout


def test_linear_eval_sigterm_saves_exits_0_and_a_rerun_ends_as_uninterrupted(tiny_data, tmp_path, moco_reference):
    flags = f"{LINCLS} --pretrained {moco_reference}"
    ref = run(f"python3 moco/main_lincls.py {flags} --ckpt-dir {tmp_path / 'ref'} {tiny_data}")
    assert ref.returncode == 0, ref.stdout[-2000:]
    cmd = f"moco/main_lincls.py {flags} --ckpt-dir {tmp_path / 'run'} {tiny_data}".split()
    code, log = interrupt(cmd, ".", tmp_path / "log", EPOCH1.search, signal.SIGTERM)
    assert code == 0 and "=> SIGTERM: saved" in log, log[-2000:]
    rerun = run("python3 " + " ".join(cmd))
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert re.search(r"=> resumed '.*checkpoint\.pth\.tar' \(epoch 1, iteration \d+\)", rerun.stdout)
    assert_same(tmp_path / "ref" / "checkpoint.pth.tar", tmp_path / "run" / "checkpoint.pth.tar")
    no_leftovers(tmp_path / "run")


def test_swav_sigterm_with_queue_resumes_exactly(tiny_data, tmp_path):
    flags = f"{SWAV} --data_path {os.path.join(tiny_data, 'train')}"
    ref = run(f"python3 swav-master/main_swav.py {flags} --dump_path {tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stdout[-2000:]
    cmd = f"swav-master/main_swav.py {flags} --save_freq 3 --dump_path {tmp_path / 'run'}".split()
    code, log = interrupt(cmd, ".", tmp_path / "log", EPOCH1.search, signal.SIGTERM)
    assert code == 0 and "=> SIGTERM: saved" in log, log[-2000:]
    rerun = run("python3 " + " ".join(cmd))
    assert rerun.returncode == 0 and re.search(r"at epoch 1 iteration \d+", rerun.stdout), rerun.stdout[-2000:]
    assert_same(tmp_path / "ref" / "checkpoint.pth.tar", tmp_path / "run" / "checkpoint.pth.tar")
    q_ref = torch.load(tmp_path / "ref" / "checkpoint.pth.tar", weights_only=True)["queues"][0]
    q_run = torch.load(tmp_path / "run" / "checkpoint.pth.tar", weights_only=True)["queues"][0]
    assert torch.equal(q_ref, q_run)
    no_leftovers(tmp_path / "run")


def test_nonfinite_loss_on_one_of_two_processes_stops_both_with_one_line(tiny_data, tmp_path):
    # Rank 1's loss turns NaN at epoch 1 batch 1 (the documented test hook).
    out = run(
        f"python3 moco/main_moco.py {MOCO.replace('-b 8', '-b 16')} -p 100 --multiprocessing-distributed "
        f"--cpu-procs 2 --dist-url tcp://127.0.0.1:{29500 + os.getpid() % 1000} "
        f"--ckpt-dir {tmp_path} {tiny_data}",
        env={"SELFSUP_DEBUG_NAN": "1:1:1"},
        timeout=240,
    )
    errors = [line for line in out.stdout.splitlines() if line.startswith("error:")]
    assert out.returncode == 2, out.stdout[-3000:]
    assert len(errors) == 1 and "loss became non-finite on 1 of 2 processes at epoch 1 batch 1" in errors[0], out.stdout
    assert "Traceback" not in out.stdout
    good = state(tmp_path / "checkpoint_0000.pth.tar")  # the last good checkpoint, loadable and finite
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


# -- one run per folder (in-process: they stop before training) ---------------------


def pretrain(data, folder, extra=()):
    args = main_moco.parse_args([*MOCO.split(), *extra, "--ckpt-dir", str(folder), data])
    return launch(lambda a: run_pretraining(a, build_moco), args)


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tiny_data, tmp_path):
    import socket

    tmp_path.joinpath(rs.LOCK_NAME).write_text(f"{os.getppid()} {socket.gethostname()} None\n")  # a live pid
    with pytest.raises(UserError, match=r"in use by another run \(pid \d+ on .*wait for it or use another --ckpt-dir"):
        pretrain(tiny_data, tmp_path)
    tmp_path.joinpath(rs.LOCK_NAME).write_text(f"{dead_pid()} {socket.gethostname()} None\n")
    lock = rs.RunLock(str(tmp_path)).acquire()
    assert open(lock.path).read().split()[0] == str(os.getpid())
    lock.release()
    assert not os.path.exists(lock.path)


def test_resume_with_other_flags_names_them_and_stops(tiny_data, tmp_path, moco_reference):
    shutil.copyfile(moco_reference, tmp_path / moco_reference.name)
    with pytest.raises(
        UserError, match=r"other flags: --moco-k 24 \(now 32\), -b \(per process\) 8 \(now 16\);.*--resume ''"
    ):
        pretrain(tiny_data, tmp_path, ["--moco-k", "32", "-b", "16", "--epochs", "3"])


def test_a_rerun_with_another_crop_min_is_refused(tiny_data, tmp_path, moco_reference):
    shutil.copyfile(moco_reference, tmp_path / moco_reference.name)
    with pytest.raises(UserError, match=r"other flags: --crop-min 0.2 \(now 0.8\);"):
        pretrain(tiny_data, tmp_path, ["--crop-min", "0.8", "--epochs", "3"])


def test_a_fresh_run_moves_the_previous_runs_files_aside(tmp_path, capsys):
    for name in ("checkpoint_0003.pth.tar", "metrics.csv"):
        tmp_path.joinpath(name).write_text("old")
    dest = rs.archive_previous_run(str(tmp_path), ["checkpoint_0003.pth.tar", "metrics.csv", "tb"])
    assert sorted(os.listdir(dest)) == ["checkpoint_0003.pth.tar", "metrics.csv"]
    assert sorted(os.listdir(tmp_path)) == ["previous-1"]
    assert "moved to" in capsys.readouterr().out


def test_metrics_keep_the_rows_before_the_resume_point(tmp_path, capsys):
    w = MetricsWriter(str(tmp_path))
    for e in range(3):
        w.write(e, loss=float(e))
    w.close()
    w = MetricsWriter(str(tmp_path), start_epoch=2)
    w.write(2, loss=9.0)
    rows = open(tmp_path / "metrics.csv").read().splitlines()
    assert rows[1:] == ["0,0", "1,1", "2,9"]
    assert "redoing 1 from epoch 2" in capsys.readouterr().out
