"""The run lock (selfsup.engine.runstate.RunLock) under contention: many
forked processes try to take one folder's lock at the same moment, for a
fresh folder and for one whose run.lock a dead run left behind. Barriers,
not sleeps, order the rounds, so nothing here depends on timing."""

import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import REPO

from selfsup.core.errors import UserError
from selfsup.engine import runstate as rs

ROUNDS, CONTENDERS = 25, 12
FORK = mp.get_context("fork")


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _log(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: O_APPEND keeps lines whole and in order
    finally:
        os.close(fd)


def _contender(folder, log, barrier, hold):
    """One process: each round, all contenders try at once (after the
    barrier); a winner logs enter, (with `hold`) keeps the lock until every
    contender has tried, logs exit and releases."""
    code = 0
    try:
        for r in range(ROUNDS):
            barrier.wait()
            lock = None
            try:
                lock = rs.RunLock(folder).acquire()
                _log(log, f"{r} enter {os.getpid()}")
            except UserError as exc:
                _log(log, f"{r} refused {os.getpid()} {'in use by another run' in str(exc)}")
            if hold:
                barrier.wait()
            if lock is not None:
                _log(log, f"{r} exit {os.getpid()}")
                lock.release()
    except BaseException as exc:  # reported through the log; the parent fails the test
        _log(log, f"crash {type(exc).__name__}: {exc}")
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def _contend(folder, log, hold, before_round=None):
    barrier = FORK.Barrier(CONTENDERS, action=before_round, timeout=60)
    procs = [FORK.Process(target=_contender, args=(folder, log, barrier, hold)) for _ in range(CONTENDERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    lines = open(log).read().splitlines()
    assert all(p.exitcode == 0 for p in procs), [line for line in lines if line.startswith("crash")][:3]
    return lines


def _holders_never_overlap(lines):
    """At most one process between its enter and its exit, at any moment."""
    inside = set()
    for line in lines:
        _, what, pid = line.split()[:3]
        if what == "enter":
            assert not inside, f"{pid} entered while {inside} held the lock"
            inside.add(pid)
        elif what == "exit":
            inside.discard(pid)


def _per_round(lines, what):
    counts = [0] * ROUNDS
    for line in lines:
        r, w = line.split()[:2]
        counts[int(r)] += w == what
    return counts


def test_twelve_contenders_for_a_fresh_folder_exactly_one_holds_it(tmp_path):
    folder, log = str(tmp_path / "run"), str(tmp_path / "log")
    lines = _contend(folder, log, hold=True)
    _holders_never_overlap(lines)
    assert _per_round(lines, "enter") == [1] * ROUNDS
    assert _per_round(lines, "refused") == [CONTENDERS - 1] * ROUNDS
    assert all(line.endswith("True") for line in lines if " refused " in line)  # the one-line message
    assert not os.path.exists(os.path.join(folder, rs.LOCK_NAME))  # released: no run.lock left


def test_twelve_contenders_for_a_dead_runs_lock_exactly_one_takes_it_over(tmp_path, capfd):
    folder, log = tmp_path / "run", str(tmp_path / "log")
    folder.mkdir()
    dead = dead_pid()

    def plant():  # before each round, a lock file that a run killed with -9 left
        (folder / rs.LOCK_NAME).write_text(f"{dead} {socket.gethostname()} 1\n")

    lines = _contend(str(folder), log, hold=True, before_round=plant)
    _holders_never_overlap(lines)
    assert _per_round(lines, "enter") == [1] * ROUNDS
    assert _per_round(lines, "refused") == [CONTENDERS - 1] * ROUNDS
    took = re.findall(rf"=> took over the stale lock of pid {dead} in ", capfd.readouterr().out)
    assert len(took) == ROUNDS


def test_contenders_that_release_at_once_never_overlap(tmp_path):
    """Winners release while others still try: every contender either held
    the lock alone or was refused, and the file is gone at the end."""
    folder, log = str(tmp_path / "run"), str(tmp_path / "log")
    lines = _contend(folder, log, hold=False)
    _holders_never_overlap(lines)
    enters, refused = _per_round(lines, "enter"), _per_round(lines, "refused")
    assert all(e >= 1 for e in enters)
    assert [e + f for e, f in zip(enters, refused)] == [CONTENDERS] * ROUNDS
    assert not os.path.exists(os.path.join(folder, rs.LOCK_NAME))


HOLDER = """
import sys
from selfsup.engine import runstate as rs
lock = rs.RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
lock.release()
"""


def _holder(folder):
    """A real process that holds `folder`'s lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_and_a_killed_ones_lock_is_taken_over(tmp_path, capsys):
    proc = _holder(tmp_path)
    with pytest.raises(UserError, match=rf"'{tmp_path}' is in use by another run \(pid {proc.pid} on "):
        rs.RunLock(str(tmp_path)).acquire()
    proc.kill()  # kill -9: the file stays, the kernel drops its lock
    proc.wait()
    assert (tmp_path / rs.LOCK_NAME).read_text().split()[0] == str(proc.pid)
    lock = rs.RunLock(str(tmp_path)).acquire()
    assert f"=> took over the stale lock of pid {proc.pid} in '{tmp_path}'" in capsys.readouterr().out
    assert (tmp_path / rs.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not (tmp_path / rs.LOCK_NAME).exists()


def test_a_holder_whose_file_is_garbled_still_holds_the_folder(tmp_path):
    """The kernel lock decides, not the file's words: a holder whose file was
    emptied (or overwritten by hand) keeps the folder."""
    proc = _holder(tmp_path)
    try:
        (tmp_path / rs.LOCK_NAME).write_text("")
        with pytest.raises(UserError, match=r"in use by another run \(pid \? on \?"):
            rs.RunLock(str(tmp_path)).acquire()
    finally:
        proc.stdin.close()
        proc.wait()
    assert proc.returncode == 0 and not (tmp_path / rs.LOCK_NAME).exists()


def test_another_hosts_lock_is_never_taken_over(tmp_path, capsys):
    (tmp_path / rs.LOCK_NAME).write_text(f"{dead_pid()} other-node.example 1\n")
    with pytest.raises(UserError) as err:
        rs.RunLock(str(tmp_path), "--dump_path").acquire()
    assert re.search(
        r"--dump_path '.*' is in use by another run \(pid \d+ on other-node.example, .*run.lock\): wait for it or "
        r"use another --dump_path; if no run on other-node.example is using it, delete the lock file",
        str(err.value),
    )
    assert "took over" not in capsys.readouterr().out
    assert (tmp_path / rs.LOCK_NAME).read_text().split()[1] == "other-node.example"  # left as it was


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    """Two runs in one process (threads, a library caller) cannot share a folder either."""
    first = rs.RunLock(str(tmp_path)).acquire()
    try:
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on "):
            rs.RunLock(str(tmp_path)).acquire()
    finally:
        first.release()
    rs.RunLock(str(tmp_path)).acquire().release()  # free again once released
