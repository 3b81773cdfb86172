"""The SLURM routes without a SLURM cluster: what SLURM would set (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_JOB_NUM_NODES,
SLURM_JOB_NODELIST, SLURM_JOB_ID) is given to real local processes, which
join a gloo group and report the rank and world size they got
(tests/rank_probe.py reads them as the training scripts do).

- submitit: tools/run_with_submitit.py submits through fake `sbatch`/`srun`
  programs; the test checks the sbatch file, then starts the job's two tasks
  as srun would (`python -m submitit.core._submit DIR` with SLURM_*).
- sbatch: tools/slurm/torchrun_node.sh on two "nodes" of this machine (c10d
  rendezvous), and tools/slurm/train.sbatch's signal handling with fake
  srun/scancel/scontrol: SIGUSR1 -> SIGTERM to the step -> requeue, in that order."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

PROBE = os.path.join(REPO, "tests", "rank_probe.py")
SBATCH = os.path.join(REPO, "tools", "slurm", "train.sbatch")
NODE = os.path.join(REPO, "tools", "slurm", "torchrun_node.sh")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(bin_dir=None, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "SELFSUP_DEBUG"))}
    env.update(PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    if bin_dir is not None:
        env["PATH"] = str(bin_dir) + os.pathsep + env["PATH"]
    return env


def write_program(folder, name, text):
    path = folder / name
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(0o755)


def reports(out, n):
    found = sorted(os.listdir(out))
    assert found == [f"rank{r}.json" for r in range(n)], found
    return [json.loads((out / name).read_text()) for name in found]


def finish(procs, timeout=180):
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outputs.append(out)
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-2000:] for o in outputs)
    return outputs


def test_submitit_slurm_job_tasks_get_their_ranks_from_slurm_variables(tmp_path):
    pytest.importorskip("submitit")
    fake = tmp_path / "bin"
    fake.mkdir()
    write_program(fake, "srun", "exit 0\n")  # submitit only checks that srun exists
    write_program(fake, "sbatch", f'cp "$1" {tmp_path}/job.sbatch\necho "Submitted batch job 4242"\n')
    job_dir, out, port = tmp_path / "job", tmp_path / "out", free_port()
    submit = subprocess.run(
        [sys.executable, "tools/run_with_submitit.py", "--executor", "slurm", "--nodes", "1", "--tasks-per-node", "2",
         "--timeout", "30", "--partition", "p1", "--account", "a1", "--qos", "q1", "--constraint", "volta",
         "--mem-gb", "64", "--cpus-per-task", "4", "--master-port", str(port), "--job-dir", str(job_dir),
         "--", "tests/rank_probe.py", str(out)],
        cwd=REPO, env=base_env(fake), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert "=> submitted job 4242 (slurm, 1 x 2 tasks)" in submit.stdout, submit.stdout
    sbatch = (tmp_path / "job.sbatch").read_text()
    for line in ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--time=30", "--signal=USR2@120",
                 "--partition=p1", "--account=a1", "--qos=q1", "--constraint=volta", "--mem=64GB",
                 "--cpus-per-task=4"]:  # fmt: skip
        assert f"#SBATCH {line}\n" in sbatch, (line, sbatch)
    # The job's two tasks, as srun would start them on one node.
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_NODELIST": "localhost", "SUBMITIT_EXECUTOR": "slurm"}  # fmt: skip
    tasks = [
        subprocess.Popen(
            [sys.executable, "-u", "-m", "submitit.core._submit", str(job_dir)],
            cwd=REPO,
            env=base_env(**slurm, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    finish(tasks)
    got = reports(out, 2)
    for r, report in enumerate(got):
        assert (report["rank"], report["group_rank"], report["local_rank"]) == (r, r, r), report
        assert report["world_size"] == report["group_size"] == 2 and report["per_node"] == 2, report
        assert report["master"] == f"localhost:{port}", report  # the first host of SLURM_JOB_NODELIST
    assert got[0]["gathered"] == [{"rank": r, "local_rank": r, "per_node": 2} for r in range(2)]


def test_torchrun_node_script_on_two_nodes_makes_one_group(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    # scontrol expands the node list; node 0 is its first host.
    write_program(fake, "scontrol", 'if [ "$1 $2" = "show hostnames" ]; then printf "localhost\\nnode2\\n"; fi\n')
    out, port = tmp_path / "out", free_port()
    slurm = {"SLURM_JOB_ID": "4243", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "localhost,node2",
             "GPUS_PER_NODE": "1", "RDZV_PORT": str(port), "PYTHON": sys.executable}  # fmt: skip
    nodes = [
        subprocess.Popen(
            ["bash", NODE, PROBE, str(out)],
            cwd=REPO,
            env=base_env(fake, **slurm, SLURM_NODEID=str(n)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for n in range(2)
    ]
    outputs = finish(nodes)
    assert "=> node 0 of 2" in outputs[0] and f"rendezvous localhost:{port}" in outputs[0], outputs[0][-2000:]
    got = reports(out, 2)
    # c10d numbers the nodes in its own order; each rank once, one process per node.
    assert sorted(r["group_rank"] for r in got) == [0, 1]
    for report in got:
        assert report["group_rank"] == report["rank"] and report["world_size"] == report["group_size"] == 2
        assert report["local_rank"] == 0 and report["per_node"] == 1, report


def test_the_slurm_scripts_parse_and_refuse_to_run_outside_a_job(tmp_path):
    for script in (SBATCH, NODE):
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
        result = subprocess.run(["bash", script, "moco/main_moco.py"], cwd=REPO, env=base_env(),
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 2 and result.stderr.startswith("error: not inside a SLURM job"), result.stderr
    result = subprocess.run(["bash", SBATCH], cwd=REPO, env=base_env(SLURM_JOB_ID="5"), capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: usage: sbatch tools/slurm/train.sbatch")


def fake_cluster(folder):
    """srun that runs until SIGTERM (or exits at once with $FAKE_SRUN_EXIT),
    scancel that sends SIGTERM to it, scontrol that records requeues; each
    appends what happened to events."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    write_program(
        bin_dir, "srun",
        f'echo "$@" > {folder}/srun.args\necho $$ > {folder}/srun.pid\n'
        'if [ -n "${FAKE_SRUN_EXIT:-}" ]; then exit "$FAKE_SRUN_EXIT"; fi\n'
        f"trap 'echo \"srun got TERM\" >> {folder}/events; exit 0' TERM\n"
        f"touch {folder}/started\nwhile true; do sleep 0.05; done\n",
    )  # fmt: skip
    write_program(bin_dir, "scancel", f'echo "scancel $*" >> {folder}/events\nkill -TERM "$(cat {folder}/srun.pid)"\n')
    write_program(bin_dir, "scontrol", f'echo "scontrol $*" >> {folder}/events\n')
    return bin_dir


def start_batch(folder, **extra):
    env = base_env(fake_cluster(folder), SLURM_JOB_ID="77", SLURM_SUBMIT_DIR=REPO, **extra)
    return subprocess.Popen(["bash", SBATCH, "moco/main_moco.py", "--epochs", "2"], cwd=str(folder), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_sbatch_template_saves_then_requeues_on_the_time_limit_signal(tmp_path):
    batch = start_batch(tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():  # the step is running: SLURM's warning comes now
        assert batch.poll() is None and time.monotonic() < deadline, batch.stdout.read()
        time.sleep(0.05)
    batch.send_signal(__import__("signal").SIGUSR1)
    out, _ = batch.communicate(timeout=60)
    assert batch.returncode == 0, out
    events = (tmp_path / "events").read_text().splitlines()
    assert events == ["scancel --signal=TERM 77", "srun got TERM", "scontrol requeue 77"], events
    args = (tmp_path / "srun.args").read_text().split()
    assert args == ["--kill-on-bad-exit=1", "bash", NODE, "moco/main_moco.py", "--epochs", "2"], args
    assert "the time limit is near" in out and "requeueing job 77" in out, out


def test_sbatch_template_without_a_signal_ends_with_the_steps_status(tmp_path):
    batch = start_batch(tmp_path, FAKE_SRUN_EXIT="3")
    out, _ = batch.communicate(timeout=60)
    assert batch.returncode == 3, out
    assert not (tmp_path / "events").exists()  # nothing signalled, nothing requeued
