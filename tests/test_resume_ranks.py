"""Exact resume of multi-process runs (docs/resume.md): a 2-process gloo run
saves a mid-epoch checkpoint at a fixed iteration (--save-freq), is killed
there (SELFSUP_DEBUG_KILL: every rank SIGKILLs itself at that boundary, so
nothing races a signal), is rerun with the same command, and ends with every
tensor of model, optimizer and queue equal to an uninterrupted run's.

Tiny: 60 images of 16 px, resnet18, 2 processes of 4 images, 7 iterations;
saved at iteration 3, killed at 4, so the rerun redoes a batch it had done."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, fast_python
from layouts import moco_v2_checkpoint

SAVE_AT, KILL_AT = 3, 4
PRETRAIN = (
    "-a resnet18 --mlp --aug-plus --cos -b 8 --moco-k 24 --image-size 16 --small-images -j 0 -p 100 "
    f"--seed 3 --epochs 1 --save-freq {SAVE_AT} --bn-splits 1"
).split()
TWO_PROCS = ["--multiprocessing-distributed", "--cpu-procs", "2"]
SWAV = (
    "--arch resnet18 --small_images true --size_crops 16 8 --nmb_crops 2 2 --min_scale_crops 0.14 0.05 "
    "--max_scale_crops 1 0.14 --nmb_prototypes 30 --workers 0 --print_freq 100 --warmup_epochs 0 --base_lr 0.6 "
    f"--final_lr 0.0006 --freeze_prototypes_niters 2 --batch_size 4 --queue_length 48 --epoch_queue_starts 0 "
    f"--epochs 1 --save_freq {SAVE_AT} --seed 3"
).split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, flags, folder, kill=False, torchrun=False):
    """Run `script` on 2 processes; with kill, every rank dies at KILL_AT."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("SELFSUP_DEBUG_KILL", None)
    if kill:
        env["SELFSUP_DEBUG_KILL"] = f"0:{KILL_AT}"
    python, env = fast_python(env)  # the ranks (mp.spawn's, torchrun's) are fresh interpreters
    if torchrun:
        head = [*python, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master-port={free_port()}"]
        argv = [*head, script, *flags, "--dump_path", str(folder)]
    else:
        argv = [*python, script, *flags, *TWO_PROCS, "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                "--ckpt-dir", str(folder)]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def tensors(path):
    """Every tensor of a checkpoint, by a flat key: weights, queue, optimizer state, SwAV queues."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    flat = {f"state_dict.{k}": v for k, v in ckpt["state_dict"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        flat.update({f"optimizer.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    for r, q in enumerate(ckpt.get("queues") or []):
        if q is not None:
            flat[f"queues.{r}"] = q
    return flat


def assert_all_equal(a, b):
    a, b = tensors(a), tensors(b)
    assert a.keys() == b.keys()
    assert any(k.startswith("optimizer.") for k in a)  # the momentum buffers are compared too
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ: {differ[:5]}"


def killed_then_rerun(script, flags, tmp_path, final, mid_name, torchrun=False, meanwhile=None):
    whole = launch(script, flags, tmp_path / "whole", torchrun=torchrun)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]
    cut = tmp_path / "cut"
    killed = launch(script, flags, cut, kill=True, torchrun=torchrun)
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert os.path.exists(cut / mid_name), (os.listdir(cut), killed.stdout[-2000:] + killed.stderr[-2000:])
    saved = torch.load(cut / mid_name, map_location="cpu", weights_only=True)
    # One sampler position and one RNG state per rank, at the saved iteration.
    assert saved["iteration"] == SAVE_AT and len(saved["rng"]) == len(saved["sampler"]) == 2
    assert saved["sampler"][0]["aug_seed"] != saved["sampler"][1]["aug_seed"]
    if meanwhile is not None:
        meanwhile(cut / mid_name)
    again = launch(script, flags, cut, torchrun=torchrun)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"iteration {SAVE_AT}" in again.stdout, again.stdout[-2000:]
    assert_all_equal(tmp_path / "whole" / final, cut / final)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth.tar"
    torch.manual_seed(0)
    torch.save(moco_v2_checkpoint("resnet18", queue=64), path)
    return str(path)


MID = "checkpoint_0000_iter000003.pth.tar"


def test_moco_v2_two_processes_resume_exactly(tiny_data, tmp_path):
    # Before the rerun on 2 processes, the same checkpoint resumed on 1 is
    # refused in one line, and leaves the folder as it was.
    killed_then_rerun(
        "moco/main_moco.py",
        [*PRETRAIN, tiny_data],
        tmp_path,
        "checkpoint_0000.pth.tar",
        MID,
        meanwhile=lambda mid: refused_on_one_process(mid, tiny_data),
    )


def test_disco_two_processes_resume_exactly(tiny_data, tmp_path, teacher):
    flags = [*PRETRAIN, "--teacher", teacher, "--teacher_arch", "resnet18", tiny_data]
    killed_then_rerun("DisCo/main.py", flags, tmp_path, "checkpoint_0000.pth.tar", MID)


def test_rkd_two_processes_resume_exactly(tiny_data, tmp_path, teacher):
    flags = [*PRETRAIN, "--teacher", teacher, "--teacher_arch", "resnet18", tiny_data]
    killed_then_rerun("DisCo/main_moco_distill_rkd.py", flags, tmp_path, "checkpoint_0000.pth.tar", MID)


def test_linear_evaluation_two_processes_resume_exactly(tiny_data, tmp_path, teacher):
    flags = ["-a", "resnet18", "-b", "8", "--image-size", "16", "-j", "0", "-p", "100", "--seed", "0",
             "--epochs", "1", "--save-freq", str(SAVE_AT), "--pretrained", teacher, tiny_data]  # fmt: skip
    killed_then_rerun("moco/main_lincls.py", flags, tmp_path, "checkpoint.pth.tar", "checkpoint.pth.tar")


def test_swav_two_processes_with_queue_resume_exactly(tiny_data, tmp_path):
    flags = [*SWAV, "--data_path", os.path.join(tiny_data, "train")]
    killed_then_rerun(
        "swav-master/main_swav.py", flags, tmp_path, "checkpoint.pth.tar", "checkpoint.pth.tar", torchrun=True
    )


def refused_on_one_process(mid, tiny_data):
    before = sorted(os.listdir(mid.parent))
    one = subprocess.run(
        [
            sys.executable,
            "moco/main_moco.py",
            *PRETRAIN,
            "--ckpt-dir",
            str(mid.parent),
            "--resume",
            str(mid),
            tiny_data,
        ],  # fmt: skip
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in one.stderr.splitlines() if line.startswith("error:")]
    assert one.returncode == 2 and len(errors) == 1, one.stdout[-2000:] + one.stderr[-2000:]
    assert MID in errors[0] and "2-process run; this run has 1: resume it on 2 processes" in errors[0], errors[0]
    assert "Traceback" not in one.stderr
    # (the killed run's stale run.lock may go: the refused run took it over)
    assert sorted(set(os.listdir(mid.parent)) - {"run.lock"}) == sorted(set(before) - {"run.lock"})


def test_swav_distill_two_processes_resume_exactly(tiny_data, tmp_path):
    from selfsup.models.swav import SwAVModel, official_state_dict

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    torch.save(official_state_dict(SwAVModel("resnet18", nmb_prototypes=30, small_images=True)), teacher)
    flags = [*SWAV, "--data_path", os.path.join(tiny_data, "train"), "--pretrained", str(teacher),
             "--teacher_arch", "resnet18"]  # fmt: skip
    killed_then_rerun(
        "swav-master/main_swav_distill.py", flags, tmp_path, "checkpoint.pth.tar", "checkpoint.pth.tar", torchrun=True
    )


def test_swav_linear_evaluation_two_processes_resume_exactly(tiny_data, tmp_path):
    from selfsup.models.swav import SwAVModel, official_state_dict

    torch.manual_seed(0)
    pretrained = tmp_path / "swav.pth"
    torch.save(official_state_dict(SwAVModel("resnet18", nmb_prototypes=30, small_images=True)), pretrained)
    flags = ["--arch", "resnet18", "--image_size", "16", "--batch_size", "4", "--workers", "0", "--epochs", "1",
             "--print_freq", "100", "--save_freq", str(SAVE_AT), "--data_path", tiny_data,
             "--pretrained", str(pretrained)]  # fmt: skip
    killed_then_rerun(
        "swav-master/eval_linear.py", flags, tmp_path, "checkpoint.pth.tar", "checkpoint.pth.tar", torchrun=True
    )


def two_nodes(flags, folders, kill=False):
    """Node 0 and node 1 of `--world-size 2` (one process each) on this machine,
    each with its own --ckpt-dir: only node 0's holds checkpoints."""
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("SELFSUP_DEBUG_KILL", None)
    if kill:
        env["SELFSUP_DEBUG_KILL"] = f"0:{KILL_AT}"
    url = f"tcp://127.0.0.1:{free_port()}"
    python, env = fast_python(env)
    procs = [
        subprocess.Popen(
            [
                *python,
                "moco/main_moco.py",
                *flags,
                "--multiprocessing-distributed",
                "--cpu-procs",
                "1",
                "--world-size",
                "2",
                "--rank",
                str(r),
                "--dist-url",
                url,
                "--ckpt-dir",
                str(folders[r]),
            ],  # fmt: skip
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    return [(p.communicate(timeout=300)[0], p.returncode) for p in procs]


def test_a_two_node_run_resumes_exactly_with_node_1_holding_no_checkpoint(tiny_data, tmp_path):
    # -b is per node: 4 images on each node's one process, 7 iterations.
    flags = [*PRETRAIN, "-b", "4", tiny_data]
    whole = [tmp_path / "whole0", tmp_path / "whole1"]
    for out, code in two_nodes(flags, whole):
        assert code == 0, out[-2000:]
    cut = [tmp_path / "cut0", tmp_path / "cut1"]
    for out, code in two_nodes(flags, cut, kill=True):
        assert code != 0, out[-2000:]
    assert (cut[0] / "checkpoint_0000_iter000003.pth.tar").exists()
    assert not cut[1].exists() or not os.listdir(cut[1])
    for out, code in two_nodes(flags, cut):
        assert code == 0, out[-2000:]
    assert_all_equal(whole[0] / "checkpoint_0000.pth.tar", cut[0] / "checkpoint_0000.pth.tar")
