"""--dist-timeout bounds every rendezvous (docs/bad-input.md): file:// in a
folder that is not there is one line at once, a peer that never comes
(tcp://, env://, file://) is one line after the timeout, and a rendezvous
that torch itself never gives up on is ended by the watchdog."""

import os
import socket
import subprocess
import time

from conftest import REPO, fast_python

MOCO = ["moco/main_moco.py", "-a", "resnet18", "-b", "8", "--moco-k", "16", "--image-size", "16", "--small-images",
        "-j", "0", "--epochs", "1"]  # fmt: skip


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script(argv, env=None, timeout=120):
    full = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", **(env or {}))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if k not in (env or {}):
            full.pop(k, None)
    start = time.time()
    python, full = fast_python(full)
    r = subprocess.run([*python, *argv], cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - start


def the_error(r):
    errors = sorted({line for line in r.stderr.splitlines() if line.startswith("error:")})
    assert r.returncode == 2 and len(errors) == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    return errors[0]


def test_a_file_store_in_a_missing_folder_is_one_line_at_once(tiny_data, tmp_path):
    url = f"file://{tmp_path}/no/such/folder/store"
    r, seconds = script([*MOCO, "--multiprocessing-distributed", "--cpu-procs", "2", "--dist-url", url,
                         "--dist-timeout", "600", "--ckpt-dir", str(tmp_path / "c"), tiny_data])  # fmt: skip
    line = the_error(r)
    assert f"folder '{tmp_path}/no/such/folder' does not exist" in line and seconds < 60, (line, seconds)


def test_a_file_store_that_is_a_folder_is_one_line(tiny_data, tmp_path):
    r, _ = script([*MOCO, "--multiprocessing-distributed", "--cpu-procs", "2", "--dist-url", f"file://{tmp_path}",
                   "--ckpt-dir", str(tmp_path / "c"), tiny_data])  # fmt: skip
    assert "is a folder; give a file in a shared folder" in the_error(r)


def test_a_file_store_whose_peer_never_comes_stops_at_dist_timeout(tiny_data, tmp_path):
    r, seconds = script([*MOCO, "--multiprocessing-distributed", "--world-size", "2", "--rank", "0", "--cpu-procs",
                         "1", "--dist-url", f"file://{tmp_path}/store", "--dist-timeout", "3",
                         "--ckpt-dir", str(tmp_path / "c"), tiny_data])  # fmt: skip
    assert "not all 2 processes joined within --dist-timeout 3 s" in the_error(r)
    assert seconds < 60, seconds


def test_env_rendezvous_with_no_store_stops_at_dist_timeout(tiny_data, tmp_path):
    # A torchrun-style process of rank 1 whose rank-0 store is not there.
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    r, seconds = script(["swav-master/main_swav.py", "--arch", "resnet18", "--data_path", os.path.join(tiny_data,
                         "train"), "--dump_path", str(tmp_path / "d"), "--dist_timeout", "3", "--workers", "0"],
                        env=env)  # fmt: skip
    line = the_error(r)
    assert "--dist_timeout 3 s" in line and "rank 1" in line, line
    assert seconds < 60, seconds


def test_the_watchdog_ends_a_rendezvous_torch_never_gives_up_on(tmp_path):
    code = (
        "import time, torch.distributed as dist\n"
        "from selfsup.engine import runtime\n"
        "dist.init_process_group = lambda **kw: time.sleep(3600)\n"  # a store that waits for ever
        "runtime.init_group('gloo', 'file:///tmp/x', 2, 0, 1.0)\n"
    )
    r, seconds = script(["-c", code], timeout=60)
    assert the_error(r).startswith(
        "error: --dist-url file:///tmp/x: not all 2 processes joined within --dist-timeout 1 s"
    )
    assert seconds < 30, seconds
