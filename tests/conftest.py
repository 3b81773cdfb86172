"""Shared fixtures: tiny data made on the spot, and a script runner."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Appended to a verbatim command so it runs in seconds on a CPU (argparse
# keeps the last value of a repeated flag).
# --bn-splits 2: groups of 15; the default 8 leaves BN 3-4 samples of 1x1
# maps in EfficientNet's last stages, whose gradients then blow its weights up.
TINY_PRETRAIN = "--epochs 1 -b 30 --moco-k 64 --image-size 16 --small-images -j 0 -p 1 --bn-splits 2"
TINY_LINCLS = "--epochs 1 -b 30 --image-size 16 -j 0 -p 1"


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


def run(cmd, cwd=REPO, env=None, timeout=600):
    """Run a shell command line with this interpreter as python3; returns
    CompletedProcess with stdout+stderr merged."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    bindir = os.path.join(REPO, "tests", "_bin")
    os.makedirs(bindir, exist_ok=True)
    shim = os.path.join(bindir, "python3")
    if not os.path.exists(shim):
        with open(shim, "w") as f:
            f.write(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        os.chmod(shim, 0o755)
    full_env["PATH"] = bindir + os.pathsep + full_env.get("PATH", "")
    full_env["PYTHONPATH"] = REPO + os.pathsep + full_env.get("PYTHONPATH", "")
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
