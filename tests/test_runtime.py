"""One process runtime (selfsup.engine.runtime) for both script families: the
MoCo scripts' --multiprocessing-distributed and the SwAV scripts' launcher
environment (RANK/WORLD_SIZE/LOCAL_RANK, torchrun or torch.distributed.launch),
with each family's flag spellings. CPU and gloo only; no training."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from moco_scripts import main_moco
from runtime_workers import report, swav_args, swav_rank

from selfsup.core.errors import UserError
from selfsup.engine.runtime import (
    Placement,
    launch,
    launch_in_place,
    launcher_placement,
)

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def read_reports(folder, n):
    return [json.load(open(os.path.join(folder, f"rank{r}.json"))) for r in range(n)]


# -- where a launcher put this process ------------------------------------------------


def test_launcher_placement_reads_torchrun_and_old_launch_environments(no_launcher):
    assert launcher_placement() is None and launcher_placement(0) is None
    no_launcher.setenv("RANK", "5")
    no_launcher.setenv("WORLD_SIZE", "8")
    # Old torch.distributed.launch: no $LOCAL_RANK, the script's --local_rank N instead. MoCo has no such flag.
    assert launcher_placement() is None
    assert launcher_placement(1) == Placement(rank=5, world_size=8, local_rank=1, per_node=8)
    no_launcher.setenv("LOCAL_RANK", "3")
    no_launcher.setenv("LOCAL_WORLD_SIZE", "4")
    assert launcher_placement() == Placement(5, 8, 3, 4)
    assert launcher_placement(1) == Placement(5, 8, 3, 4)  # $LOCAL_RANK wins over the flag


def test_one_swav_process_without_a_launcher(no_launcher, tmp_path):
    seen = launch_in_place(report, swav_args(tmp_path, "--batch_size", "6", "--workers", "1"))
    assert seen == {
        "rank": 0,
        "world_size": 1,
        "device": "cpu",
        "gpu": None,
        "distributed": False,
        "batch_size": 6,
        "workers": 1,
        "threads": torch.get_num_threads(),
        "sum_of_ranks": 0.0,
        "group": False,
    }


def test_each_family_names_its_own_flags(no_launcher, tmp_path):
    with pytest.raises(UserError, match="--world_size 2 without a launcher: start the processes with torchrun"):
        launch_in_place(report, swav_args(tmp_path, "--world_size", "2"))
    if not torch.cuda.is_available():
        args = swav_args(tmp_path)
        args.device = "cuda"
        with pytest.raises(UserError, match="--device cuda given, but no CUDA GPU is visible"):
            launch_in_place(report, args)
        args = main_moco.parse_args(["--gpu", "0", "--ckpt-dir", str(tmp_path), str(tmp_path)])
        with pytest.raises(UserError, match="--gpu 0 given, but no CUDA GPU is visible"):
            launch(report, args)


# -- two gloo processes, each way in ------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) placement is what is checked")
def test_swav_scripts_join_a_torchrun_group(tmp_path):
    args = swav_args(tmp_path, "--batch_size", "6", "--workers", "1", "--dist_timeout", "60")
    mp.spawn(swav_rank, nprocs=2, args=(free_port(), args))
    reports = read_reports(tmp_path, 2)
    cores = os.cpu_count() or 1
    for rank, seen in enumerate(reports):
        # --batch_size and --workers are per process (SwAV's): not divided.
        assert seen == {
            "rank": rank,
            "world_size": 2,
            "device": "cpu",
            "gpu": None,
            "distributed": True,
            "batch_size": 6,
            "workers": 1,
            "threads": max(1, cores // 2),
            "sum_of_ranks": 1.0,
            "group": 2,
        }
    assert not dist.is_initialized()  # the parent never joined


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU (gloo) placement is what is checked")
def test_moco_scripts_spawn_their_own_group(no_launcher, tmp_path):
    args = main_moco.parse_args(
        [
            "-b",
            "6",
            "-j",
            "2",
            "--multiprocessing-distributed",
            "--cpu-procs",
            "2",
            "--world-size",
            "1",
            "--rank",
            "0",
            "--dist-url",
            f"tcp://127.0.0.1:{free_port()}",
            "--dist-timeout",
            "60",
            "--ckpt-dir",
            str(tmp_path),
            str(tmp_path),
        ]
    )
    launch(report, args)
    cores = os.cpu_count() or 1
    for rank, seen in enumerate(read_reports(tmp_path, 2)):
        # -b and -j are per node (the original's): each of the two processes gets half.
        assert seen == {
            "rank": rank,
            "world_size": 2,
            "device": "cpu",
            "gpu": None,
            "distributed": True,
            "batch_size": 3,
            "workers": 1,
            "threads": max(1, cores // 2),
            "sum_of_ranks": 1.0,
            "group": 2,
        }
