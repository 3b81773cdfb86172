"""The library works installed as a plain (non-editable) package, with no
path back to the checkout, and the scripts run on such an install."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from conftest import REPO

from selfsup.cli.flags import default_data

LIBRARY = os.path.join(REPO, "selfsup")


def modules_under(root):
    """The .py files of a package tree, relative to it."""
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, files in os.walk(root)
        for name in files
        if name.endswith(".py")
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --target` of a copy of the sources (setuptools builds in
    the source folder, which must not be the checkout shared with others)."""
    tmp = tmp_path_factory.mktemp("install")
    src, target = tmp / "src", tmp / "target"
    src.mkdir()
    shutil.copy(os.path.join(REPO, "pyproject.toml"), src)
    shutil.copytree(LIBRARY, src / "selfsup", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        timeout=300,
    )
    return target


def isolated(target, *argv, cwd):
    """Run this interpreter with -S: no site processing, so no .pth file and
    no editable finder pointing at the checkout; the third-party packages
    come from site-packages put on PYTHONPATH (where .pth files are ignored)."""
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    path = ([str(target)] if target else []) + sorted(site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DISCO_DATA", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join(path), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-S", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_the_install_holds_every_module_of_the_library(installed):
    assert modules_under(installed / "selfsup") == modules_under(LIBRARY)
    assert len({os.path.dirname(m) for m in modules_under(LIBRARY)}) >= 9  # selfsup and its layer packages


def test_without_the_install_the_checkout_is_not_importable(installed, tmp_path):
    # The control for the tests below: what they import can only be the install.
    r = isolated(None, "-c", "import selfsup", cwd=tmp_path)
    assert r.returncode != 0 and "No module named 'selfsup'" in r.stdout, r.stdout


def test_a_script_runs_on_the_install_and_defaults_to_its_checkouts_data(installed, tmp_path):
    script = os.path.join(REPO, "moco", "main_moco.py")
    r = isolated(installed, script, "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: main_moco.py"), r.stdout
    # What `python moco/main_moco.py` (no DIR) resolves, run as that script is:
    # its folder first on sys.path, its path in sys.argv[0].
    probe = (
        "import json, runpy, sys; sys.argv = [{s!r}]; sys.path[0] = {d!r}; "
        "ns = runpy.run_path({s!r}, run_name='probe'); import selfsup; "
        "print(json.dumps([selfsup.__file__, ns['parse_args']([]).data]))"
    ).format(s=script, d=os.path.dirname(script))
    r = isolated(installed, "-c", probe, cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    library_file, data = json.loads(r.stdout.strip().splitlines()[-1])
    assert library_file == str(installed / "selfsup" / "__init__.py")
    assert data == os.path.join(REPO, "data", "builtin")


def test_default_data_is_the_builtin_set_beside_the_scripts_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DISCO_DATA", raising=False)
    checkout = tmp_path / "elsewhere"
    assert default_data(str(checkout / "DisCo" / "main.py")) == str(checkout / "data" / "builtin")
    monkeypatch.chdir(checkout.parent)
    monkeypatch.setattr(sys, "argv", [os.path.join("elsewhere", "swav-master", "main_swav.py")])
    assert default_data() == str(checkout / "data" / "builtin")  # the running program's, made absolute
    monkeypatch.setenv("DISCO_DATA", str(tmp_path / "mine"))
    assert default_data() == str(tmp_path / "mine")


SCRIPT_FOLDERS = ("moco", "DisCo", "swav-master", "data", "detection", "tools", "benchmarks")


def test_every_script_has_a_shebang_and_leaves_sys_path_alone():
    scripts = [
        os.path.join(folder, name)
        for folder in SCRIPT_FOLDERS
        for name in sorted(os.listdir(os.path.join(REPO, folder)))
        if name.endswith(".py")
    ]
    texts = {path: open(os.path.join(REPO, path)).read() for path in scripts}
    runnable = [path for path, text in texts.items() if '__name__ == "__main__"' in text]
    assert "moco/main_moco.py" in runnable and "tools/demo.py" in runnable
    assert [p for p in runnable if not texts[p].startswith("#!/usr/bin/env python3\n")] == []
    assert [p for p in runnable if not os.access(os.path.join(REPO, p), os.X_OK)] == []
    assert [p for p, text in texts.items() if "sys.path.insert" in text or "sys.path.append" in text] == []
