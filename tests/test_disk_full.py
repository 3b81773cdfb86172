"""A full disk, quota or file size limit (docs/resume.md): every script ends
with one line saying so and naming the folder, the last good checkpoint is
intact and loads, and no partial file is left. Real scripts in subprocesses,
under RLIMIT_FSIZE (SIGXFSZ ignored, so a write past the limit fails with
EFBIG) and, where this machine lets us mount one, on a tiny tmpfs that
fills up (ENOSPC). Tiny: 16 px, 60 images, ResNet-18."""

import errno
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from selfsup.analysis import embeddings
from selfsup.core import checkpoint as ck
from selfsup.core import files
from selfsup.core.errors import UserError, cli_main
from selfsup.engine import runstate as rs
from selfsup.engine import runtime

MOCO = "-a resnet18 -b 8 --moco-k 24 --image-size 16 --small-images -j 0 -p 1 --seed 3".split()
LINCLS = "-a resnet18 -b 8 --image-size 16 -j 0 -p 1 --seed 0".split()
SWAV = (
    "--arch resnet18 --small_images true --size_crops 16 8 --nmb_crops 2 2 --min_scale_crops 0.14 0.05 "
    "--max_scale_crops 1 0.14 --nmb_prototypes 30 --workers 0 --print_freq 100 --warmup_epochs 0 --base_lr 0.6 "
    "--final_lr 0.0006 --freeze_prototypes_niters 2 --batch_size 8 --epochs 1"
).split()
LIMIT = 4 << 20  # 4 MiB: logs and metrics fit, no ResNet-18 checkpoint does


# Sets the limit, then becomes the script (exec keeps both the limit and the
# ignored SIGXFSZ, so a write past the limit fails with EFBIG instead of
# killing the process); no preexec_fn, which is unsafe in a threaded pytest.
LIMITED = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "os.execv(sys.executable, [sys.executable] + sys.argv[2:])\n"
)


def script(argv, limit=None):
    """Run a script of the checkout; with `limit`, under RLIMIT_FSIZE=limit."""
    prefix = ["-c", LIMITED, str(limit)] if limit else []
    return subprocess.run(
        [sys.executable, *prefix, *argv],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def error_lines(out):
    return [line for line in out.splitlines() if line.startswith("error:")]


def leftovers(folder):
    """Partial files, temporaries and locks anywhere under `folder`."""
    found = []
    for root, _, names in os.walk(folder):
        found += [n for n in names if files.PARTIAL_MARK in n or ".tmp" in n or n == rs.LOCK_NAME]
    return found


def assert_loads(path, epoch):
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["epoch"] == epoch and all(
        torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
    )


@pytest.fixture(scope="module")
def moco_epoch0(tiny_data, tmp_path_factory):
    """A MoCo run folder after its first epoch (checkpoint_0000.pth.tar)."""
    folder = tmp_path_factory.mktemp("moco") / "ckpt"
    done = script(["moco/main_moco.py", *MOCO, "--epochs", "1", "--ckpt-dir", str(folder), tiny_data])
    assert done.returncode == 0, done.stdout[-2000:]
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


def copy_run(src, dst):
    dst.mkdir()
    for name in os.listdir(src):
        if os.path.isfile(src / name):
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_moco_past_the_file_size_limit_stops_with_one_line_and_keeps_the_last_checkpoint(
    tiny_data, tmp_path, moco_epoch0
):
    folder = copy_run(moco_epoch0, tmp_path / "ckpt")
    last = folder / "checkpoint_0000.pth.tar"
    before = digest(last)
    dead = subprocess.Popen(["true"])
    dead.wait()
    user_file = folder / f"notes.txt.tmp{dead.pid}"  # a user's file that merely looks like a temporary
    user_file.write_text("mine")
    r = script(["moco/main_moco.py", *MOCO, "--epochs", "2", "--ckpt-dir", str(folder), tiny_data], limit=LIMIT)
    assert r.returncode == 2, r.stdout[-3000:]
    errors = error_lines(r.stdout)
    assert len(errors) == 1 and "Traceback" not in r.stdout, r.stdout[-3000:]
    assert errors[0].startswith("error: the file size limit is reached (File too large) writing ")
    assert f"in '{folder}'" in errors[0] and f"'{last}', the last good checkpoint, is intact" in errors[0]
    assert digest(last) == before
    assert_loads(last, 1)
    assert user_file.read_text() == "mine"  # the sweep at start left it alone
    assert [n for n in leftovers(folder) if n != user_file.name] == []
    assert sorted(n for n in os.listdir(folder) if n.endswith(".pth.tar")) == ["checkpoint_0000.pth.tar"]


def test_a_linear_evaluation_past_the_file_size_limit_keeps_its_checkpoint(tiny_data, tmp_path, moco_epoch0):
    pretrained = moco_epoch0 / "checkpoint_0000.pth.tar"
    folder = tmp_path / "lin"
    first = script(
        ["moco/main_lincls.py", *LINCLS, "--epochs", "1", "--pretrained", str(pretrained), "--ckpt-dir", str(folder)]
        + [tiny_data]
    )
    assert first.returncode == 0, first.stdout[-2000:]
    last = folder / "checkpoint.pth.tar"
    before = digest(last)
    r = script(
        ["moco/main_lincls.py", *LINCLS, "--epochs", "2", "--pretrained", str(pretrained), "--ckpt-dir", str(folder)]
        + [tiny_data],
        limit=256 << 10,  # the linear head's checkpoint (a frozen ResNet-18 inside) does not fit
    )
    assert r.returncode == 2, r.stdout[-3000:]
    errors = error_lines(r.stdout)
    assert len(errors) == 1 and "Traceback" not in r.stdout, r.stdout[-3000:]
    assert "the file size limit is reached" in errors[0] and f"in '{folder}'" in errors[0]
    assert f"'{last}', the last good checkpoint, is intact" in errors[0]
    assert digest(last) == before
    assert_loads(last, 1)
    assert leftovers(folder) == []


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point for a tmpfs of a given size (skipped where mounting is refused)."""
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = []

    def mount(size):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or r.returncode})")
        mounted.append(point)
        return point

    yield mount
    for p in mounted:
        subprocess.run(["umount", str(p)], check=False)


def test_swav_on_a_full_disk_leaves_no_truncated_ckp_file(tiny_data, tmp_path, tmpfs):
    """SwAV writes checkpoint.pth.tar, then copies it to checkpoints/ckp-0.pth:
    on a disk with room for one copy only, the copy fails whole."""
    ref = tmp_path / "ref"
    done = script(["swav-master/main_swav.py", *SWAV, "--data_path", f"{tiny_data}/train", "--dump_path", str(ref)])
    assert done.returncode == 0, done.stdout[-2000:]
    size = os.path.getsize(ref / "checkpoint.pth.tar")
    assert os.path.getsize(ref / "checkpoints" / "ckp-0.pth") == size
    dump = tmpfs(size + size // 2) / "dump"
    r = script(["swav-master/main_swav.py", *SWAV, "--data_path", f"{tiny_data}/train", "--dump_path", str(dump)])
    assert r.returncode == 2, r.stdout[-3000:]
    errors = error_lines(r.stdout)
    assert len(errors) == 1 and "Traceback" not in r.stdout, r.stdout[-3000:]
    assert errors[0].startswith("error: the disk is full (No space left on device) writing ")
    assert f"in '{dump / 'checkpoints'}'" in errors[0]
    assert f"'{dump / 'checkpoint.pth.tar'}', the last good checkpoint, is intact" in errors[0]
    assert_loads(dump / "checkpoint.pth.tar", 1)
    assert os.listdir(dump / "checkpoints") == []  # no truncated ckp-0.pth, no partial file
    assert leftovers(dump) == []


# -- the writer and the net, in-process ------------------------------------------------------


def test_atomic_write_on_a_full_disk_removes_its_partial_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")
    with pytest.raises(UserError) as err:
        with ck.atomic_write(target, "w") as f:
            f.write("new\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value) == (
        f"the disk is full (No space left on device) writing '{target}' in '{tmp_path}': no partial file is "
        f"left and '{target}', the last good file, is intact; free space in '{tmp_path}' and rerun"
    )
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.csv"]


def test_a_quota_behind_torch_saves_runtime_error_is_named(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError whose context is the
    OSError: the writer finds it there."""

    def save(obj, f):
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(
        UserError,
        match=r"^the disk quota is used up \(Disk quota exceeded\) writing .*there is no earlier checkpoint to keep",
    ):
        ck.save_checkpoint({"epoch": 1}, str(tmp_path / "checkpoint_0000.pth.tar"))
    assert os.listdir(tmp_path) == []


def test_save_checkpoint_past_a_real_file_size_limit(tmp_path):
    """A real EFBIG, in a child process (the limit would bind pytest too)."""
    code = (
        "import resource, signal, sys, torch\n"
        "from selfsup.core import checkpoint as ck\n"
        "from selfsup.core.errors import UserError\n"
        "ck.save_checkpoint({'epoch': 0, 'state_dict': {'w': torch.zeros(10)}}, "
        "sys.argv[1] + '/checkpoint_0000.pth.tar')\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "try:\n"
        "    ck.save_checkpoint({'epoch': 1, 'state_dict': {'w': torch.zeros(1 << 20)}}, "
        "sys.argv[1] + '/checkpoint_0001.pth.tar')\n"
        "except UserError as exc:\n"
        "    print(exc)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"the file size limit is reached (File too large) writing '{tmp_path}/checkpoint_0001")
    assert f"'{tmp_path}/checkpoint_0000.pth.tar', the last good checkpoint, is intact" in r.stdout
    assert os.listdir(tmp_path) == ["checkpoint_0000.pth.tar"]


def test_cli_main_turns_any_full_disk_into_one_line_naming_the_file(tmp_path, capsys):
    path = str(tmp_path / "sub" / "events.out")

    @cli_main
    def writes():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    with pytest.raises(SystemExit) as done:
        writes()
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        f"error: the disk is full (No space left on device) writing '{path}' in '{tmp_path / 'sub'}': "
        f"free space in '{tmp_path / 'sub'}' and rerun\n"
    )


def test_cli_main_leaves_other_os_errors_as_they_are():
    @cli_main
    def fails():
        raise PermissionError(errno.EACCES, "Permission denied", "/x")

    with pytest.raises(PermissionError):  # a bug or a setup problem: its traceback is shown
        fails()


class _Args:
    rank, world_size, gpu, batch_size, workers = 0, 1, None, 8, 0
    dist_backend, dist_url = "gloo", "tcp://127.0.0.1:1"


def test_a_spawned_rank_that_meets_a_full_disk_exits_2_with_one_line(capsys):
    def worker(args):
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError as exc:
            raise RuntimeError("file write failed") from exc

    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as done:
            runtime._spawned(0, 1, worker, _Args())
    finally:
        torch.set_flush_denormal(False)  # start_process set it for the CPU
        torch.set_num_threads(before)
    assert done.value.code == 2
    assert capsys.readouterr().err == (
        "error: the file size limit is reached (File too large) while writing: "
        "raise the file size limit (ulimit -f) and rerun\n"
    )


def test_embeddings_on_a_full_tmpfs_name_the_disk_and_keep_the_old_files(tmp_path, tmpfs):
    """numpy writes a real file with tofile(), whose error carries no errno:
    the writer reads the full disk off the folder's free space."""
    folder = tmpfs("256k")
    embeddings.save(folder, "m", np.zeros((4, 4)), np.arange(4))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UserError) as err:
        embeddings.save(folder, "m", np.zeros((200_000, 4)), np.arange(200_000))
    assert str(err.value).startswith(f"the disk is full (No space left on device) writing '{folder}/m_embed.npy'")
    assert f"'{folder}/m_embed.npy', the last good embedding file, is intact" in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
