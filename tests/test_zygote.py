"""tests/zygote.py, the pre-imported interpreter behind conftest.run: a
command started from it behaves as the same command in a fresh
interpreter (output, exit status, tracebacks, signals), and goes to a fresh
interpreter where the environment says the pre-imported modules could differ."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, fast_python, run
from zygote import import_env

SCRIPT = """\
import os, sys
print("preimported" if "torch" in sys.modules else "fresh")
print(__name__, sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)), os.getcwd())
print("to stderr", file=sys.stderr)
if sys.argv[1:] == ["raise"]:
    raise ValueError("planted")
if sys.argv[1:] == ["die"]:
    os.kill(os.getpid(), 9)
if sys.argv[1:] == ["term"]:
    import signal, time
    signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(7)))
    with open(sys.argv[0] + ".ready.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[0] + ".ready.tmp", sys.argv[0] + ".ready")
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
"""


@pytest.fixture(scope="module")
def server():
    """The server answers, and this process's environment still sends commands
    to it (a variable the tests before changed in what the imports read would
    silently send every later command to a fresh interpreter)."""
    import json

    python, env = fast_python(dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1"))
    ours, theirs = import_env(env), json.loads(env["SELFSUP_TEST_ZYGOTE_ENV"])
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    assert not differ, f"the environment differs from the server's in {differ}"
    deadline = time.time() + 120  # the server imports torch once, in the background
    while run("python3 -c 'import sys; print(\"torch\" in sys.modules)'").stdout.strip() != "True":
        assert time.time() < deadline, "the server never answered"
        time.sleep(0.5)


@pytest.fixture
def script(tmp_path, server):
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def fresh(path, *args):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(path), *args], cwd=path.parent, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("args", [(), ("3",), ("raise",)])
def test_a_command_prints_and_exits_as_in_a_fresh_interpreter(script, args):
    forked = run(f"python3 {script} {' '.join(args)} 2>/dev/null", cwd=str(script.parent))
    alone = fresh(script, *args)
    assert forked.stdout.startswith("preimported\n") and alone.stdout.startswith("fresh\n")
    assert forked.stdout.split("\n", 1)[1] == alone.stdout.split("\n", 1)[1]
    assert forked.returncode == alone.returncode == {(): 0, ("3",): 3, ("raise",): 1}[args]
    both = run(f"python3 {script} {' '.join(args)}", cwd=str(script.parent)).stdout
    assert "to stderr" in both
    if args == ("raise",):
        assert "Traceback" in both and "ValueError: planted" in both


def test_a_child_killed_by_a_signal_kills_its_client_with_it(script):
    # -9 where bash execs the command, 137 where it waits for it
    assert run(f"python3 {script} die", cwd=str(script.parent)).returncode in (-9, 128 + 9)
    assert fresh(script, "die").returncode == -9


def start_waiting(script):
    """The probe started through the client, once it waits for SIGTERM (it wrote its pid)."""
    python, env = fast_python(dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1"))
    proc = subprocess.Popen([*python, str(script), "term"], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(f"{script}.ready"):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    return proc


def test_sigterm_to_the_client_reaches_the_script(script):
    proc = start_waiting(script)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7 and "preimported" in out and "got SIGTERM" in out


def test_another_import_environment_or_interpreter_option_gets_a_fresh_interpreter(script):
    assert run(f"python3 {script}", env={"OMP_NUM_THREADS": "2"}).stdout.startswith("fresh\n")
    assert run(f"python3 -B {script}").stdout.startswith("fresh\n")
    assert run(f"python3 {script}", env={"SELFSUP_RUN": "x"}).stdout.startswith("preimported\n")


def test_a_killed_client_takes_its_child_with_it(script):
    proc = start_waiting(script)
    child = int(open(f"{script}.ready").read())
    assert child != proc.pid  # the script runs in the server's fork, not in the client
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while _alive(child):
        assert time.time() < deadline, "the child outlived its client"
        time.sleep(0.05)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
