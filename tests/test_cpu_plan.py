"""The demo uses the machine it is on: lanes and threads from the CPUs."""

import os

import pipeline
import pytest


@pytest.mark.parametrize(
    "cpus,plan", [(1, (1, 1)), (2, (2, 1)), (4, (2, 2)), (5, (2, 2)), (6, (3, 2)), (16, (3, 5)), (64, (3, 21))]
)
def test_lanes_times_threads_fill_the_cpus_without_oversubscribing(cpus, plan):
    lanes, threads = pipeline.cpu_plan(cpus)
    assert (lanes, threads) == plan
    assert lanes * threads <= cpus


def test_flags_override_the_plan():
    assert pipeline.cpu_plan(16, lanes=2) == (2, 8)
    assert pipeline.cpu_plan(16, threads=1) == (3, 1)
    assert pipeline.cpu_plan(2, lanes=4, threads=3) == (4, 3)


def test_usable_cpus_is_this_process_affinity():
    assert pipeline.usable_cpus() == len(os.sched_getaffinity(0))


def test_each_step_gets_its_threads_unless_the_user_set_them(tmp_path, monkeypatch):
    log = tmp_path / "log"
    probe = ["python3", "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    pipeline.sh(probe, str(tmp_path), str(log), threads=5)
    assert "threads 5" in log.read_text()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's (make test's) setting wins
    pipeline.sh(probe, str(tmp_path), str(log), threads=5)
    assert "threads 1" in log.read_text()
