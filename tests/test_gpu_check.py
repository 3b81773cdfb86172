"""benchmarks/gpu_check.py without a GPU: it says so, runs every step as a
tiny CPU dry run, exits 0, and its report has a value for every "to be
measured" cell of README.md and docs/speed.md. Also its two ways of running
a step (a fresh process on the GPU, a fork in the dry run) on a step that
passes and one that fails, and its bad flags."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

CHECK = os.path.join(REPO, "benchmarks", "gpu_check.py")
SCRIPTS = [
    "moco/main_moco.py",
    "DisCo/main.py",
    "DisCo/main_moco_distill_rkd.py",
    "swav-master/main_swav.py",
    "swav-master/main_swav_distill.py",
    "moco/main_lincls.py",
    "DisCo/main_lincls.py",
    "DisCo/yt_main_lincls.py",
    "DisCo/main_lincls_semi.py",
    "DisCo/cifar_main_lincls.py",
    "swav-master/eval_linear.py",
]


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, CHECK, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def rows(report, first_cell):
    return [line for line in report.splitlines() if line.startswith(f"| {first_cell}")]


def test_the_dry_run_runs_every_step_and_fills_every_cell(tmp_path):
    out = tmp_path / "check"
    result = check(["--out", str(out)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "=> no GPU is visible: a CPU dry run of the same steps" in result.stdout
    report = (out / "report.md").read_text()
    assert "**CPU dry run: no GPU is visible.**" in report
    steps = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and "`" in line]
    assert len(steps) == 21 + 5 + 1, len(steps)  # every script and variant, the accuracy check, throughput.py
    assert all(cells[3] == "ok" for cells in steps), [c for c in steps if c[3] != "ok"]
    ran = {cells[1].strip("`") for cells in steps}
    assert set(SCRIPTS) <= ran, set(SCRIPTS) - ran
    variants = {cells[2] for cells in steps}
    assert {"fp32", "bf16, channels-last, --gpu-aug", "bf16, channels-last"} <= variants, variants
    # Each "to be measured" place of the two files, found there, has a value.
    cells = [line for line in report.split("## 4.")[1].splitlines() if line.startswith(("| README.md:", "| docs/"))]
    places = [name for name in ("README.md", "docs/speed.md") for line in open(os.path.join(REPO, name))
              if "to be measured" in line.lower()]  # fmt: skip
    assert len(cells) == len(places) > 0, (cells, places)
    assert not [c for c in cells if "not filled" in c], cells
    readme = [line for line in report.split("ready to paste:")[1].splitlines() if line.startswith("| DisCo")]
    assert len(readme) == 2 and all("to be measured" not in line for line in readme), readme
    for line in readme:
        synthetic, e2e = line.split(" | ")[2:4]
        assert float(synthetic.replace(",", "")) > 0 and float(e2e.replace(",", "")) > 0, line
    assert rows(report, "fp32 ") and rows(report, "fast ") and "Fast minus fp32:" in report


# Run in a fresh interpreter: forking pytest's own process (and its threads) is not what the check does.
STEPS = """
import json, sys
sys.path.insert(0, "benchmarks")
import gpu_check as g
data, logs, runner = sys.argv[1:]
good = g.Step("good", "data/prepare_builtin.py", "-", ["data/prepare_builtin.py", "--out", data,
              "--train-per-class", "1", "--val-per-class", "1", "--size", "8"])
bad = g.Step("bad", "moco/main_moco.py", "-", ["moco/main_moco.py", "--epochs", "-1", data], ("good",))
after = g.Step("after", "moco/main_lincls.py", "-", ["moco/main_lincls.py", data], ("bad",))
g.run_steps([good, bad, after], 2, logs, getattr(g, runner), 1)
print(json.dumps([[s.status, s.note] for s in (good, bad, after)]))
"""


@pytest.mark.parametrize("runner", ["Spawned", "Forked"])
def test_a_step_that_passes_and_one_that_fails(runner, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = [sys.executable, "-c", STEPS, str(tmp_path / "data"), str(logs), runner]
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (good, good_note), (bad, bad_note), (after, after_note) = json.loads(result.stdout.splitlines()[-1])
    assert good == "ok" and good_note.startswith("=> wrote 20 images"), (good, good_note)
    assert bad == "failed (status 2)" and bad_note.startswith("error: --epochs -1"), (bad, bad_note)
    assert after == "skipped" and after_note == "needs bad, which did not pass"


@pytest.fixture(scope="module")
def gpu_check():
    return load_check()


def test_throughput_tables_are_read_back(gpu_check):
    text = (
        "| model | path | synthetic pairs/s | data-only pairs/s | end-to-end pairs/s | e2e / synthetic | peak |\n"
        "|---|---|---|---|---|---|---|\n"
        "| DisCo EfficientNet-B0 <- ResNet-50 | original (fp32) | 1,217 | 1,128 | 850 | 70% | 24.0 |\n"
        "| DisCo EfficientNet-B0 <- ResNet-50 | fast (bf16, channels_last) | 2,592 | 6,000 | 2,450 | 95% | - |\n"
    )
    original, fast = gpu_check.disco_rows(gpu_check.parse_throughput(text))
    assert (original["synthetic"], original["e2e"], original["peak"]) == (1217, 850, 24.0)
    assert (fast["e2e"], fast["peak"]) == (2450, None)
    assert gpu_check.readme_row("fast", fast) == "| DisCo EffB0 <- R50 | fast | 2,592 | 2,450 | 95% | - |"
    sentence = gpu_check.targets_sentence(original, fast, "H200")
    assert "2,450 pairs/s (target >= 2,400: met), x2.88 the original path (target >= 2.1x: met)" in sentence
    assert "95% of the fast path's synthetic ceiling (target >= 90%: met)" in sentence


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--budget", "0"], "--budget 0: expected a positive number of seconds"),
        (["--out", "README.md"], "--out 'README.md' is a file; expected a new or empty folder"),
        (["--out", "docs"], "--out 'docs' is not empty; give a new or empty folder"),
    ],
)
def test_bad_flags_are_one_line(args, expected):
    result = check(args, timeout=60)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in errors[0], errors[0]
