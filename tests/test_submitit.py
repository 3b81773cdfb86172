"""tools/run_with_submitit.py with submitit's local executor: a 2-task job
(gloo on the CPU) of a tiny MoCo-v2 is pre-empted mid-epoch, requeued by
submitit, and ends with every tensor of an uninterrupted run's.

The pre-emption is the job's own path, at a known iteration:
SELFSUP_DEBUG_PREEMPT=0:2 makes each rank send submitit's warning signal
(SIGUSR2) to its task at boundary 2 and wait; the task passes SIGUSR1 on to
the script, every rank saves there and exits 0, rank 0's task hands submitit
the same command (checkpoint()) and requeues, and the requeued job resumes
from the run folder. Nothing depends on when a signal arrives."""

import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO
from test_resume_ranks import assert_all_equal

TOOL = os.path.join(REPO, "tools", "run_with_submitit.py")
# 30 images, 2 processes of 5: three iterations; pre-empted after the second.
FLAGS = (
    "-a resnet18 --mlp --aug-plus --cos -b 10 --moco-k 20 --image-size 16 --small-images -j 0 -p 100 "
    "--seed 3 --epochs 1 --bn-splits 1"
).split()


def env_for(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    for name in ("SELFSUP_DEBUG_KILL", "SELFSUP_DEBUG_PREEMPT", "SUBMITIT_PREEMPT_SIGNAL"):
        if name not in extra:
            env.pop(name, None)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, TOOL, *args], cwd=REPO, env=env or env_for(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from selfsup.data.builtin import prepare

    root = str(tmp_path_factory.mktemp("small_data"))
    prepare(root, train_per_class=3, val_per_class=1, size=16, seed=2)
    return root


def test_a_preempted_local_job_is_requeued_and_ends_bit_identical(small_data, tmp_path):
    pytest.importorskip("submitit")
    # The uninterrupted run: the same 2 processes, started by the script itself.
    whole = subprocess.run(
        [sys.executable, "moco/main_moco.py", *FLAGS, "--multiprocessing-distributed", "--cpu-procs", "2",
         "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--ckpt-dir", str(tmp_path / "whole"), small_data],
        cwd=REPO, env=env_for(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-2000:]

    job_dir, cut = tmp_path / "job", tmp_path / "cut"
    args = ["--executor", "local", "--tasks-per-node", "2", "--gpus-per-node", "0", "--timeout", "20",
            "--job-dir", str(job_dir), "--", "moco/main_moco.py", *FLAGS, "--ckpt-dir", str(cut),
            small_data]  # fmt: skip
    job = tool(args, env=env_for(SELFSUP_DEBUG_PREEMPT="0:2"))
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-3000:]
    # Saved at the pre-emption, requeued by submitit, resumed there by the requeued job.
    assert "=> SIGUSR1: saved" in out and "at epoch 0 iteration 2" in out, out[-3000:]
    assert "Requeued job" in out, out[-3000:]
    assert "(epoch 0, iteration 2)" in out, out[-3000:]
    assert out.count("Starting with JobEnvironment") == 2, out[-3000:]  # rank 0's task ran twice
    assert "=> rank 0: moco/main_moco.py finished" in job.stdout and "=> rank 1:" in job.stdout
    assert sorted(os.listdir(cut)) == ["checkpoint_0000.pth.tar", "metrics.csv", "tb"]
    assert_all_equal(tmp_path / "whole" / "checkpoint_0000.pth.tar", cut / "checkpoint_0000.pth.tar")


def test_without_submitit_the_tool_says_which_extra_in_one_line(tmp_path):
    fake = tmp_path / "no_submitit" / "submitit"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'submitit'\")\n")
    env = env_for()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), REPO])
    result = tool(["--executor", "local", "--", "moco/main_moco.py"], env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "needs submitit" in errors[0] and "pip install -e '.[cluster]'" in errors[0], errors[0]


BAD = [
    (["--executor", "local", "moco/main_moco.py"], "expected `-- SCRIPT.py FLAGS` after the job's flags"),
    (["--executor", "local", "--"], "nothing after `--`: expected a script and its flags"),
    (["--executor", "local", "--", "moco/no_such.py"], "after `--`: script 'moco/no_such.py' not found"),
    (["--executor", "local", "--", "torchrun", "x.py"], "after `--`: 'torchrun' is not a script"),
    (["--executor", "local", "--nodes", "2", "--", "moco/main_moco.py"], "--nodes 2 with --executor local"),
    (["--tasks-per-node", "0", "--", "moco/main_moco.py"], "--tasks-per-node 0: expected at least 1"),
    (["--timeout", "0", "--", "moco/main_moco.py"], "--timeout 0: expected a positive number of minutes"),
    (["--timeout", "1", "--signal-delay", "60", "--", "moco/main_moco.py"], "--signal-delay 60: expected 0 <="),
    (["--slurm-param", "exclusive", "--", "moco/main_moco.py"], "--slurm-param 'exclusive': expected KEY=VALUE"),
    (["--job-dir", "README.md", "--", "moco/main_moco.py"], "--job-dir 'README.md': 'README.md' is a file"),
]


@pytest.mark.parametrize("args,expected", BAD, ids=[e.split(":")[0][:30] for _, e in BAD])
def test_bad_job_flags_are_one_line(args, expected):
    result = tool(args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in errors[0], errors[0]


def test_slurm_without_srun_is_one_line(tmp_path):
    pytest.importorskip("submitit")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = tool(["--executor", "slurm", "--job-dir", str(tmp_path / "j"), "--", "moco/main_moco.py"],
                  env=env_for(PATH=str(empty)))  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "--executor slurm: no 'srun' on PATH" in errors[0], errors[0]


def test_a_script_that_fails_in_the_job_shows_its_own_line(small_data, tmp_path):
    pytest.importorskip("submitit")
    args = ["--executor", "local", "--tasks-per-node", "1", "--timeout", "5", "--job-dir", str(tmp_path / "job"),
            "--", "moco/main_moco.py", "--epochs", "-3", small_data]  # fmt: skip
    result = tool(args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "--epochs" in errors[0], errors[0]
