"""Shared fixtures: tiny data made on the spot, and a script runner."""

import os
import re
import shlex
import subprocess
import sys

import pytest

SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not copied into a worker's tree: environments, caches and run outputs.
_NOT_COPIED = (
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "_bin",
    "ckpt*",
    "runs",
    "results",
    "builtin",
    "digits",
    "std.log",
)


def _worker_tree(worker):
    """Under pytest-xdist each worker runs the scripts from its own copy of
    the repository, so that what they write by default (moco/ckpt,
    moco/logs/std.log, tests/_bin) never meets another worker's files."""
    import shutil
    import tempfile

    dest = os.path.join(tempfile.gettempdir(), f"disco-tests-{os.getuid()}", worker, "repo")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SOURCE, dest, ignore=shutil.ignore_patterns(*_NOT_COPIED), symlinks=True)
    return dest


REPO = _worker_tree(os.environ["PYTEST_XDIST_WORKER"]) if os.environ.get("PYTEST_XDIST_WORKER") else SOURCE
# Modules whose commands are Reproduction.md's verbatim, with its fixed
# --dist-url port (tcp://localhost:10001): their tests share one xdist
# worker (`--dist loadgroup`), so two of them never bind the port at once.
FIXED_PORT_MODULES = {"test_reproduction_moco", "test_reproduction_disco", "test_reproduction_tab5"}


@pytest.hookimpl(tryfirst=True)  # before xdist turns the group into the node id
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ in FIXED_PORT_MODULES:
            item.add_marker(pytest.mark.xdist_group("fixed-port"))


# Appended to a verbatim command so it runs in seconds on a CPU (argparse
# keeps the last value of a repeated flag).
# --bn-splits 2: groups of 15; the default 8 leaves BN 3-4 samples of 1x1
# maps in EfficientNet's last stages, whose gradients then blow its weights up.
TINY_PRETRAIN = "--epochs 1 -b 30 --moco-k 64 --image-size 16 --small-images -j 0 -p 1 --bn-splits 2"
TINY_LINCLS = "--epochs 1 -b 30 --image-size 16 -j 0 -p 1"


# The environment ends with the test: script flags run in this process set
# process-wide policies there (--unsafe-load, --skip-bad-images), and
# libraries imported or run in-process set their own variables (sklearn's
# KMP_*, detectron2's PYTHONHASHSEED, torch's TORCHINDUCTOR_CACHE_DIR). None
# of them may reach the tests after it, or the commands those tests start.
@pytest.fixture(autouse=True)
def _environment_ends_with_the_test():
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


# Disk: pytest's retention policy (pyproject: failed) deletes the folders of
# passed tests only when the session ends, so a full run once held every
# test's checkpoints at the same time (several GB). A passed test's tmp_path
# goes as the test ends; a failed one's stays for reading. Module fixtures
# that write large files delete them when their module's tests are done.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _passed_tests_leave_no_folder(request):
    yield
    folder = request.node.funcargs.get("tmp_path")
    if folder is not None and not request.node.stash.get(_FAILED, False):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """10 classes x (6 train, 2 val) procedural 32 px images."""
    from selfsup.data.builtin import prepare

    root = str(tmp_path_factory.mktemp("tiny_data"))
    prepare(root, train_per_class=6, val_per_class=2, size=32, seed=1)
    return root


@pytest.fixture
def torch_one_thread():
    """One torch thread for the test's duration (2 cores, other processes)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# tests/zygote.py: the command lines of run() start from one pre-imported
# interpreter per test process instead of importing torch each time.
_BASE_ENV = dict(os.environ)
_ZYGOTE = {}


def _zygote_env(bindir):
    """The variables that send the shim's commands to this process's server
    (started on the first call, in the background: until it listens, the
    shim starts fresh interpreters); none under SELFSUP_TEST_FRESH=1."""
    if os.environ.get("SELFSUP_TEST_FRESH") == "1" or _BASE_ENV.get("SELFSUP_TEST_FRESH") == "1":
        return {}
    if not _ZYGOTE:
        import atexit
        import json
        import shutil
        import tempfile

        from zygote import import_env

        folder = tempfile.mkdtemp(prefix="selfsup-zygote-")
        env = dict(_BASE_ENV, PYTHONUNBUFFERED="1")
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        with open(os.path.join(folder, "server.log"), "w") as log:
            server = subprocess.Popen(
                [sys.executable, os.path.join(REPO, "tests", "zygote.py"), "--serve", os.path.join(folder, "socket")],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def stop():
            server.kill()
            server.wait()
            shutil.rmtree(folder, ignore_errors=True)

        atexit.register(stop)
        _ZYGOTE["env"] = {
            "SELFSUP_TEST_ZYGOTE": os.path.join(folder, "socket"),
            "SELFSUP_TEST_ZYGOTE_ENV": json.dumps(import_env(env), sort_keys=True),
        }
    return _ZYGOTE["env"]


def _shim(bindir):
    """tests/_bin/python3: zygote.py's client, which falls back to this interpreter."""
    shim = os.path.join(bindir, "python3")
    client = shlex.quote(os.path.join(REPO, "tests", "zygote.py"))
    text = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {client} "$@"\n'
    if not os.path.exists(shim) or open(shim).read() != text:
        os.makedirs(bindir, exist_ok=True)
        partial = f"{shim}.{os.getpid()}"
        with open(partial, "w") as f:
            f.write(text)
        os.chmod(partial, 0o755)
        os.replace(partial, shim)


def fast_python(env):
    """(argv head, env) that start `python ...` from the pre-imported server
    (tests/zygote.py) where `env` allows it. Not for a process the test
    kills with SIGKILL: that kills the client, and the server's child only
    after it."""
    bindir = os.path.join(REPO, "tests", "_bin")
    return [sys.executable, os.path.join(REPO, "tests", "zygote.py")], dict(env, **_zygote_env(bindir))


def run(cmd, cwd=REPO, env=None, timeout=600):
    """Run a shell command line with this interpreter as python3; returns
    CompletedProcess with stdout+stderr merged."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    bindir = os.path.join(REPO, "tests", "_bin")
    _shim(bindir)
    full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(_zygote_env(bindir))
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        cwd=os.path.join(REPO, cwd),
        env=full_env,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reproduction_commands(section):
    """The command lines of a `<!-- section: NAME -->` block of Reproduction.md."""
    text = open(os.path.join(REPO, "Reproduction.md")).read()
    m = re.search(rf"<!-- section: {section} -->\s*```[a-z]*\n(.*?)```", text, re.S)
    assert m, f"no section {section} in Reproduction.md"
    lines, current = [], ""
    for line in m.group(1).splitlines():
        line = line.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def with_overrides(cmd, data, extra, replacements=()):
    """`cmd` with /dev/shm replaced by `data`, `extra` flags put before the
    output redirection, and other (old, new) replacements applied."""
    for old, new in replacements:
        cmd = cmd.replace(old, new)
    cmd = re.sub(r"/dev/shm/?(?=\s|$)", data, cmd)
    head, sep, tail = cmd.partition(" 2>&1")
    return f"{head} {extra}{sep}{tail}"
