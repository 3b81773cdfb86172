"""Two nodes on this one machine (gloo, one process each) train in step:
moco/main_moco.py's --multiprocessing-distributed --world-size 2 --rank 0|1,
and torchrun --nnodes 2. A node whose peer never comes stops with one line
when --dist-timeout expires."""

import os
import socket
import subprocess
import sys
import time

import torch
from conftest import REPO, fast_python, run

NODE = os.path.join(REPO, "tests", "node_dump.py")
TINY = [
    "-a",
    "resnet18",
    "-b",
    "8",
    "--moco-k",
    "32",
    "--image-size",
    "16",
    "--small-images",
    "-j",
    "0",
    "-p",
    "100",
    "--epochs",
    "1",
    "--seed",
    "0",
    "--resume",
    "",
    "--dist-timeout",
    "60",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, cwd):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if cmd[0] == sys.executable:  # each node's first process from the pre-imported server
        python, env = fast_python(env)
        cmd = [*python, *cmd[1:]]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs, timeout=240):
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return outs


def assert_in_step(folders):
    """Both ranks end with the same parameters and queue; both moved from
    the initial weights, and the queue holds both ranks' keys."""
    s0 = torch.load(os.path.join(folders[0], "rank0.pt"))
    s1 = torch.load(os.path.join(folders[1], "rank1.pt"))
    assert s0.keys() == s1.keys()
    # BN running statistics are per-rank under DDP (as in the original).
    shared = [k for k in s0 if "running_" not in k and not k.endswith("num_batches_tracked")]
    assert len(shared) > 100
    for k in shared:
        assert torch.equal(s0[k], s1[k]), k
    # -b is per node and each node has one process: 30 images per rank, 8 per step, drop_last:
    # 3 steps of 16 gathered keys into a queue of 32.
    assert int(s0["queue_ptr"]) == 3 * 16 % 32
    assert not torch.equal(s0["encoder_q.conv1.weight"], s0["encoder_k.conv1.weight"])


def test_two_nodes_multiprocessing_distributed(tiny_data, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    folders = [str(tmp_path / f"node{r}") for r in range(2)]
    procs = [
        start(
            [
                sys.executable,
                NODE,
                *TINY,
                "--multiprocessing-distributed",
                "--world-size",
                "2",
                "--rank",
                str(r),
                "--dist-url",
                url,
                "--ckpt-dir",
                folders[r],
                tiny_data,
            ],
            REPO,
        )
        for r in range(2)
    ]
    finish(procs)
    assert_in_step(folders)
    assert os.path.isfile(os.path.join(folders[0], "checkpoint_0000.pth.tar"))
    assert not os.path.exists(os.path.join(folders[1], "checkpoint_0000.pth.tar"))  # only rank 0 writes


def test_two_nodes_torchrun(tiny_data, tmp_path):
    port = free_port()
    folders = [str(tmp_path / f"node{r}") for r in range(2)]
    procs = [
        start(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(r),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                NODE,
                *TINY,
                "--ckpt-dir",
                folders[r],
                tiny_data,
            ],
            REPO,
        )
        for r in range(2)
    ]
    finish(procs)
    assert_in_step(folders)


def test_node_without_its_peer_stops_at_dist_timeout(tiny_data, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.time()
    r = run(
        f"python3 main_moco.py -a resnet18 -b 8 --moco-k 32 --image-size 16 --small-images -j 0 --epochs 1 "
        f"--resume '' --multiprocessing-distributed --world-size 2 --rank 0 --dist-url {url} "
        f"--dist-timeout 3 --ckpt-dir {tmp_path} {tiny_data}",
        cwd="moco",
        timeout=60,
    )
    took = time.time() - t0
    assert r.returncode == 2, r.stdout
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--dist-timeout 3" in lines[0], r.stdout
    assert took < 40


def test_torchrun_node_without_its_peer_stops_at_the_rendezvous_timeout_docs_flags_names(tiny_data, tmp_path):
    # docs/flags.md: under torchrun the wait happens before the script runs and
    # is bounded by torchrun's own --rdzv-conf timeout, not --dist-timeout.
    t0 = time.time()
    proc = start(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            "0",
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "--rdzv-conf",
            "timeout=3",
            NODE,
            *TINY,
            "--ckpt-dir",
            str(tmp_path),
            tiny_data,
        ],
        REPO,
    )
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert "Timed out" in out and "1/2 clients joined" in out, out[-2000:]
    assert time.time() - t0 < 45
    assert not os.listdir(tmp_path)  # the script never started
