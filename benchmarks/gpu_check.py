#!/usr/bin/env python3
"""Everything that needs a GPU, in one call and one report (no arguments needed):

    python benchmarks/gpu_check.py              # one GPU: sized for under 8 minutes (not yet run on one)
    python benchmarks/gpu_check.py --dry-run    # the same steps on the CPU, tiny (a GPU machine too)

1. A few steps of every script on the device: MoCo-v2, DisCo and RKD
   pretraining (fp32, and bf16 + channels-last + --gpu-aug), SwAV and
   SwAV+DisCo (fp32, bf16 + channels-last), every linear evaluation (fp32,
   and bf16 + channels-last; SwAV's eval_linear.py in fp32, its only mode).
2. benchmarks/throughput.py at its defaults.
3. docs/speed.md's accuracy check: the same short MoCo-v2 pretraining and
   linear evaluation on the built-in data with and without the fast path.

It writes one markdown report (OUT/report.md) holding, besides the results,
the value of every "to be measured" cell of README.md and docs/speed.md,
found by searching those files. Without a GPU it says so and runs the same
steps at tiny sizes on the CPU (a check of the check, not GPU figures), and
exits 0 when every step passed (1 when one did not). Every step has a time
limit and its log in OUT/logs/. On the GPU each step is its own process (an
argument list, never a shell string); the dry run forks this process, which
has imported torch once, and runs the script there as `python SCRIPT ARGS`
would (on 2 CPU cores a fresh interpreter's imports cost more than a tiny step).
"""

import argparse
import csv
import datetime
import os
import platform
import re
import runpy
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

from selfsup.core.errors import UserError, cli_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_PRETRAIN = ["--precision", "bf16", "--channels-last", "--gpu-aug"]
FAST_LINCLS = ["--precision", "bf16", "--channels-last"]
FAST_SWAV = ["--precision", "bf16", "--channels_last", "true"]
LINCLS_SCRIPTS = [
    "moco/main_lincls.py",
    "DisCo/main_lincls.py",
    "DisCo/yt_main_lincls.py",
    "DisCo/main_lincls_semi.py",
    "DisCo/cifar_main_lincls.py",
]


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the GPU check's, or the CPU dry run's."""

    name: str
    data: tuple  # train and val images per class, image side in px
    pretrain: list
    student: str  # DisCo/RKD student
    lincls: list
    swav: list
    swav_eval: list
    small: bool  # the small-images stem (tiny crops)
    jobs: int  # smoke steps side by side
    step_timeout: float
    throughput: list
    accuracy_data: tuple  # as `data`
    accuracy_pretrain: list
    accuracy_lincls: list
    accuracy_timeout: float


GPU = Profile(
    name="gpu",
    data=(32, 8, 64),
    pretrain="-a resnet18 --mlp --aug-plus --cos -b 64 --moco-k 256 --image-size 224 -j 4 --epochs 1 -p 1 "
    "--seed 0 --bn-splits 2".split(),
    student="efficientb0",
    lincls="-a resnet18 --image-size 224 -b 64 -j 4 --epochs 1 -p 1".split(),
    swav="--arch resnet18 --size_crops 160 96 --nmb_crops 2 2 --min_scale_crops 0.14 0.05 --max_scale_crops 1 0.14 "
    "--nmb_prototypes 100 --batch_size 32 --queue_length 96 --epoch_queue_starts 0 --epochs 1 --workers 4 "
    "--freeze_prototypes_niters 2 --warmup_epochs 0 --base_lr 0.6 --final_lr 0.0006 --print_freq 1".split(),
    swav_eval="--arch resnet18 --image_size 224 --batch_size 32 --workers 4 --epochs 1 --print_freq 1".split(),
    small=False,
    jobs=6,
    step_timeout=240,
    throughput=[],
    accuracy_data=(300, 100, 40),
    accuracy_pretrain="-a resnet18 --small-images --image-size 32 --mlp --aug-plus --cos --moco-t 0.2 --moco-k 4096 "
    "-b 256 --epochs 25 --seed 0 -j 8 -p 20".split(),
    accuracy_lincls="-a resnet18 --small-images --image-size 32 -b 256 --lr 0.05 --cos --epochs 10 --seed 0 -j 8 "
    "-p 20".split(),
    accuracy_timeout=300,
)
CPU = Profile(
    name="cpu",
    data=(3, 1, 16),
    pretrain="-a resnet18 --mlp --aug-plus --cos -b 10 --moco-k 20 --image-size 16 --small-images -j 0 --epochs 1 "
    "-p 1 --seed 0 --bn-splits 1".split(),
    student="resnet18",
    lincls="-a resnet18 --image-size 16 --small-images -b 10 -j 0 --epochs 1 -p 1".split(),
    swav="--arch resnet18 --small_images true --size_crops 16 8 --nmb_crops 2 2 --min_scale_crops 0.14 0.05 "
    "--max_scale_crops 1 0.14 --nmb_prototypes 30 --batch_size 10 --queue_length 20 --epoch_queue_starts 0 "
    "--epochs 1 --workers 0 --freeze_prototypes_niters 2 --warmup_epochs 0 --base_lr 0.6 --final_lr 0.0006 "
    "--print_freq 1".split(),
    swav_eval="--arch resnet18 --image_size 16 --small_images true --batch_size 10 --workers 0 --epochs 1 "
    "--print_freq 1".split(),
    small=True,
    jobs=2,
    step_timeout=300,
    throughput=["--tiny", "--models", "disco_effb0_r50", "--paths", "original,fast"],
    accuracy_data=(3, 1, 16),
    accuracy_pretrain="-a resnet18 --small-images --image-size 16 --mlp --aug-plus --cos --moco-t 0.2 --moco-k 20 "
    "-b 10 --epochs 1 --seed 0 -j 0 -p 1 --bn-splits 1".split(),
    accuracy_lincls="-a resnet18 --small-images --image-size 16 -b 10 --lr 0.05 --cos --epochs 1 --seed 0 -j 0 "
    "-p 1".split(),
    accuracy_timeout=300,
)


@dataclass
class Step:
    """One run of one script; `after`: the steps whose outputs it reads."""

    key: str
    script: str
    variant: str
    argv: list
    after: tuple = ()
    timeout: float = 300
    status: str = "not run"
    seconds: float = 0.0
    note: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="", help="report folder (default: results/gpu_check/<time>; a new folder)")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run, even where a GPU is visible")
    p.add_argument("--budget", type=float, default=470, help="seconds in all; throughput.py, last, gets the rest")
    args = p.parse_args(argv)
    if not args.budget > 0:
        raise UserError(f"--budget {args.budget:g}: expected a positive number of seconds")
    args.out = make_out_dir(args.out)
    return args


def make_out_dir(path):
    """A new folder for the report: never one with someone's files in it."""
    if not path:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = os.path.join(REPO, "results", "gpu_check", stamp)
        while os.path.exists(path):
            path += "+"
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out '{path}' is a file; expected a new or empty folder")
    if os.path.isdir(path) and os.listdir(path):
        raise UserError(f"--out '{path}' is not empty; give a new or empty folder (nothing there is overwritten)")
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


# -- inputs ---------------------------------------------------------------------------------


def make_data(root, spec, seed):
    """The built-in data's generator, its PNGs turned into JPEGs: --gpu-aug's
    decoder (nvjpeg on a GPU) reads JPEGs; other files are decoded in the workers."""
    from PIL import Image

    from selfsup.data.builtin import prepare

    train, val, size = spec
    prepare(root, train_per_class=train, val_per_class=val, size=size, seed=seed)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".png"):
                png = os.path.join(folder, name)
                Image.open(png).convert("RGB").save(png[:-4] + ".jpg", quality=90)
                os.remove(png)  # our own file, just made
    return root


def write_cifar10(root, n_train=50, n_test=10, seed=0):
    """CIFAR-10 in its python layout, random pixels: what cifar_main_lincls.py
    reads (with --unsafe-load: they are not the official files)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(name, n):
        data = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(data, f)

    for i in range(1, 6):
        batch(f"data_batch_{i}", n_train // 5)
    batch("test_batch", n_test)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def write_swav_teacher(path, small):
    """A SwAV-layout ResNet-18 (as the official releases are laid out), the
    SwAV+DisCo teacher: random weights do for a speed and path check."""
    from selfsup.models.swav import SwAVModel, official_state_dict

    torch.manual_seed(0)
    torch.save(official_state_dict(SwAVModel("resnet18", nmb_prototypes=30, small_images=small)), path)
    return path


# -- the steps ------------------------------------------------------------------------------


def smoke_steps(profile, data, cifar, swav_teacher, runs):
    """Every script, each variant: pretraining first, the runs that read a
    checkpoint (teachers, evaluations) after the run that writes it."""
    steps = []

    def add(key, script, variant, argv, after=()):
        folder = os.path.join(runs, key)
        out_flag = ["--dump_path", folder] if script.startswith("swav-master/") else ["--ckpt-dir", folder]
        steps.append(Step(key, script, variant, [script, *argv, *out_flag], tuple(after), profile.step_timeout))

    moco_ckpt = os.path.join(runs, "moco-fp32", "checkpoint_0000.pth.tar")
    swav_ckpt = os.path.join(runs, "swav-fp32", "checkpoints", "ckp-0.pth")
    student = ["-a", profile.student]
    for fast, variant in [(False, "fp32"), (True, "bf16, channels-last, --gpu-aug")]:
        tag = "fast" if fast else "fp32"
        extra = FAST_PRETRAIN if fast else []
        add(f"moco-{tag}", "moco/main_moco.py", variant, [*profile.pretrain, *extra, data])
        teacher = ["--teacher", moco_ckpt, "--teacher_arch", "resnet18"]
        for key, script in [("disco", "DisCo/main.py"), ("rkd", "DisCo/main_moco_distill_rkd.py")]:
            flags = [*profile.pretrain, *student, *teacher, *extra, data]
            add(f"{key}-{tag}", script, variant, flags, after=["moco-fp32"])
    for fast, variant in [(False, "fp32"), (True, "bf16, channels-last")]:
        tag = "fast" if fast else "fp32"
        swav = [*profile.swav, *(FAST_SWAV if fast else ["--precision", "fp32"])]
        add(f"swav-{tag}", "swav-master/main_swav.py", variant, [*swav, "--data_path", os.path.join(data, "train")])
        distill = ["--pretrained", swav_teacher, "--teacher_arch", "resnet18"]
        distill += ["--data_path", os.path.join(data, "train")]
        add(f"swav-disco-{tag}", "swav-master/main_swav_distill.py", variant, [*swav, *distill])
        for script in LINCLS_SCRIPTS:
            name = os.path.splitext(os.path.basename(script))[0].replace("_", "-")
            key = f"{script.split('/')[0].lower()}-{name}-{tag}"
            target = ["--dataset", "cifar10", "--unsafe-load", cifar] if "cifar" in script else [data]
            flags = [*profile.lincls, *(FAST_LINCLS if fast else []), "--pretrained", moco_ckpt, *target]
            add(key, script, variant, flags, after=["moco-fp32"])
    add("swav-eval-linear-fp32", "swav-master/eval_linear.py", "fp32 (its only mode)",
        [*profile.swav_eval, "--data_path", data, "--pretrained", swav_ckpt], after=["swav-fp32"])  # fmt: skip
    return steps


def accuracy_steps(profile, data, runs):
    """docs/speed.md's check: the data, then the same pretraining + linear
    evaluation with and without the fast path."""
    train, val, size = profile.accuracy_data
    made = ["data/prepare_builtin.py", "--out", data, "--train-per-class", str(train), "--val-per-class", str(val),
            "--size", str(size), "--seed", "0"]  # fmt: skip
    steps = [Step("accuracy-data", "data/prepare_builtin.py", "-", made, (), profile.accuracy_timeout)]
    epochs = int(profile.accuracy_pretrain[profile.accuracy_pretrain.index("--epochs") + 1])
    for tag, (pre, lin) in {"fp32": ([], []), "fast": (FAST_PRETRAIN, FAST_LINCLS)}.items():
        folder = os.path.join(runs, f"accuracy-{tag}")
        ckpt = os.path.join(folder, f"checkpoint_{epochs - 1:04d}.pth.tar")
        pretrain = ["moco/main_moco.py", *profile.accuracy_pretrain, *pre, "--ckpt-dir", folder, data]
        lincls = ["moco/main_lincls.py", *profile.accuracy_lincls, *lin, "--pretrained", ckpt,
                  "--ckpt-dir", folder + "-lincls", data]  # fmt: skip
        steps.append(Step(f"accuracy-pretrain-{tag}", pretrain[0], tag, pretrain, ("accuracy-data",),
                          profile.accuracy_timeout))  # fmt: skip
        steps.append(Step(f"accuracy-lincls-{tag}", lincls[0], tag, lincls, (f"accuracy-pretrain-{tag}",),
                          profile.accuracy_timeout))  # fmt: skip
    return steps


def read_accuracy(steps):
    """Each linear evaluation's last top-1, from its metrics.csv."""
    for step in steps:
        if step.key.startswith("accuracy-lincls") and step.status == "ok":
            metrics = os.path.join(step.argv[step.argv.index("--ckpt-dir") + 1], "metrics.csv")
            with open(metrics) as f:
                step.extra["acc1"] = float(list(csv.DictReader(f))[-1]["acc1"])
    return steps


# -- running them ---------------------------------------------------------------------------


class Spawned:
    """A step as its own `python SCRIPT ARGS` process (the GPU check's way)."""

    def __init__(self, argv, log, threads):
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)

    def poll(self):
        return self.proc.poll()

    def kill(self):
        self.proc.kill()
        self.proc.wait()


class Forked:
    """A step run by a fork of this process, which has imported torch and the
    scripts once (the dry run's way: on a 2-core CPU, a fresh interpreter's
    imports cost more than a tiny step). The child runs the script as
    `python SCRIPT ARGS` would: its own argv, folder on sys.path, __main__."""

    def __init__(self, argv, log, threads):
        sys.stdout.flush()
        sys.stderr.flush()
        self.code = None
        self.pid = os.fork()
        if self.pid == 0:
            _run_in_child(argv, log, threads)

    def poll(self):
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.code = -signal.SIGKILL


def _run_in_child(argv, log, threads):
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # Fresh line-buffered streams on the log (the parent's may be anything, e.g. pytest's capture).
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.chdir(REPO)
        torch.set_num_threads(threads)
        script = os.path.join(REPO, argv[0])
        sys.argv = [script, *argv[1:]]  # the scripts import no siblings: sys.path needs no script folder
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def preload(scripts):
    """Import what the scripts import, once, before the forks (their module
    code runs; their main() does not)."""
    for script in dict.fromkeys(scripts):
        runpy.run_path(os.path.join(REPO, script), run_name="gpu_check_preload")


def finish(step, code, seconds):
    step.seconds = seconds
    if code == 0:
        step.status, step.note = "ok", last_line(step.log, "=> ")
    else:
        step.status = f"timed out ({step.timeout:g} s)" if code is None else f"failed (status {code})"
        step.note = last_line(step.log, "error: ") or last_line(step.log, "")
    print(f"   {step.status:>8}  {step.seconds:6.1f} s  {step.key}", flush=True)


def run_steps(steps, jobs, logs, runner, threads):
    """Up to `jobs` steps at once, each when the steps it reads from are done
    (skipped when one of them did not pass); a step past its time limit is
    killed. One thread: forks are made from here alone."""
    by_key = {s.key: s for s in steps}
    pending, running = list(steps), []
    while pending or running:
        for step, handle, started in list(running):
            code, seconds = handle.poll(), time.monotonic() - started
            if code is None and seconds > step.timeout:
                handle.kill()
            elif code is None:
                continue
            finish(step, code if seconds <= step.timeout else None, seconds)
            running.remove((step, handle, started))
        for step in list(pending):
            failed = [a for a in step.after if by_key[a].status not in ("not run", "running", "ok")]
            if failed:
                step.status, step.note = "skipped", f"needs {failed[0]}, which did not pass"
                pending.remove(step)
        for step in list(pending):
            if len(running) < jobs and all(by_key[a].status == "ok" for a in step.after):
                step.status, step.log = "running", os.path.join(logs, f"{step.key}.log")
                running.append((step, runner(step.argv, step.log, threads), time.monotonic()))
                pending.remove(step)
        time.sleep(0.05)
    return steps


def last_line(path, prefix):
    """The last line of a log starting with `prefix` (tabs flattened, cut short)."""
    found = ""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(prefix) and line.strip():
                found = line.strip()
    return found.replace("\t", " ").replace("|", "/")[:160]


def run_throughput(profile, out, logs, runner, timeout):
    table = os.path.join(out, "throughput.md")
    step = Step("throughput", "benchmarks/throughput.py", "tiny" if profile.throughput else "defaults",
                ["benchmarks/throughput.py", *profile.throughput, "--out", table], timeout=timeout)  # fmt: skip
    run_steps([step], 1, logs, runner, threads=os.cpu_count() or 1)
    text = open(table).read() if step.status == "ok" and os.path.exists(table) else ""
    return step, text, parse_throughput(text)


def parse_throughput(text):
    """Rows of throughput.py's table: model, path and the figures (None for '-')."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] == "model" or set(cells[0]) <= {"-"}:
            continue
        number = [None if c in ("-", "") else float(c.replace(",", "").rstrip("%")) for c in cells[2:]]
        rows.append(dict(model=cells[0], path=cells[1].split(" ")[0], synthetic=number[0], data=number[1],
                         e2e=number[2], ratio=number[3], peak=number[4]))  # fmt: skip
    return rows


# -- the report ----------------------------------------------------------------------------


def machine_line(gpu):
    if gpu:
        props = torch.cuda.get_device_properties(0)
        device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        device = "no GPU (CPU dry run)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        commit = commit.stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (
        f"{device}; {os.cpu_count()} CPU cores ({platform.machine()}); torch {torch.__version__}; "
        f"commit {commit}; {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def steps_table(steps):
    lines = ["| step | script | variant | status | seconds | last line |", "|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.key} | `{s.script}` | {s.variant} | {s.status} | {s.seconds:.1f} | {s.note} |")
    return lines


def disco_rows(rows):
    """README's two speed rows: DisCo EffB0 <- R50, original and fast."""
    pick = {r["path"]: r for r in rows if r["model"].startswith("DisCo EfficientNet-B0")}
    return pick.get("original"), pick.get("fast")


def fmt(value, spec=None, unit=""):
    """A figure as the README writes it: thousands with commas, small ones with a decimal."""
    if value is None:
        return "-"
    return format(value, spec or (",.0f" if abs(value) >= 100 else ".1f")) + unit


def readme_row(label, row):
    ratio = fmt(row["e2e"] / row["synthetic"], ".0%") if row["e2e"] and row["synthetic"] else "-"
    return (f"| DisCo EffB0 <- R50 | {label} | {fmt(row['synthetic'])} | {fmt(row['e2e'])} | {ratio} | "
            f"{fmt(row['peak'], '.1f', ' GiB')} |")  # fmt: skip


def targets_sentence(original, fast, device):
    """README's sentence on the targets, with what was measured."""
    if not (original and fast and original["e2e"] and fast["e2e"] and fast["synthetic"]):
        return None
    speedup, ceiling = fast["e2e"] / original["e2e"], fast["e2e"] / fast["synthetic"]

    def verdict(ok):
        return "met" if ok else "not met"

    return (
        f"Measured on {device} by benchmarks/gpu_check.py: DisCo EffB0 <- R50 end to end "
        f"{fast['e2e']:,.0f} pairs/s (target >= 2,400: {verdict(fast['e2e'] >= 2400)}), x{speedup:.2f} the "
        f"original path (target >= 2.1x: {verdict(speedup >= 2.1)}), {ceiling:.0%} of the fast path's synthetic "
        f"ceiling (target >= 90%: {verdict(ceiling >= 0.9)})."
    )


def accuracy_lines(steps):
    acc = {s.variant: s.extra.get("acc1") for s in steps if s.key.startswith("accuracy-lincls")}
    lines = ["| path | linear top-1 |", "|---|---|"]
    lines += [f"| {tag} | {fmt(acc.get(tag), '.2f')} |" for tag in ("fp32", "fast")]
    if acc.get("fp32") is not None and acc.get("fast") is not None:
        gap = acc["fast"] - acc["fp32"]
        verdict = "met" if abs(gap) <= 1 else "not met"
        lines += ["", f"Fast minus fp32: {gap:+.2f} points (target: within 1 point: {verdict})."]
    return lines


# Each "to be measured" place of README.md and docs/speed.md, and what fills it.
CELLS = [
    ("README.md", r"\| DisCo EffB0 <- R50 \| original", "readme-original"),
    ("README.md", r"\| DisCo EffB0 <- R50 \| fast", "readme-fast"),
    ("README.md", r"to be measured \(the targets", "readme-targets"),
    ("docs/speed.md", r"GPU \(H100\): \*\*to be measured\*\*", "speed-results"),
    ("docs/speed.md", r"^To be measured on a GPU", "speed-accuracy"),
]


def to_be_measured():
    """(file, line number, text) of every line of README.md and docs/speed.md saying 'to be measured'."""
    found = []
    for name in ("README.md", os.path.join("docs", "speed.md")):
        with open(os.path.join(REPO, name)) as f:
            for n, line in enumerate(f, 1):
                if "to be measured" in line.lower():
                    found.append((name, n, line.rstrip("\n")))
    return found


def fillings(results):
    """What goes in each cell found by to_be_measured(); 'not filled' for a cell this check does not know."""
    original, fast = disco_rows(results["throughput"])
    values = {
        "readme-original": readme_row("original (fp32, PIL workers)", original) if original else None,
        "readme-fast": readme_row("fast (bf16, channels_last, --gpu-aug)", fast) if fast else None,
        "readme-targets": targets_sentence(original, fast, results["device"]),
        "speed-results": f"GPU ({results['device']}): the table of section 2" if results["throughput_text"] else None,
        "speed-accuracy": "the table and the difference of section 3" if results["accuracy_done"] else None,
    }
    rows = []
    for name, n, line in to_be_measured():
        key = next((k for f, pattern, k in CELLS if f == name and re.search(pattern, line)), None)
        value = values.get(key) if key else None
        rows.append((name, n, line.strip(), value or "not filled (this check does not measure it, or its step failed)"))
    return rows


def cell(text):
    """Text inside a markdown table cell."""
    return text.replace("|", "\\|")


def write_report(out, gpu, results, seconds):
    device = results["device"]
    head = [
        "# GPU check (benchmarks/gpu_check.py)",
        "",
        f"Machine: {machine_line(gpu)}; the whole check took {seconds / 60:.1f} min.",
        "",
    ]
    if not gpu:
        head += ["**CPU dry run: no GPU is visible.** The same steps at tiny sizes: they show that the check and "
                 "every step run, not the GPU's figures.", ""]  # fmt: skip
    body = ["## 1. Every script on the device", "", *steps_table(results["smoke"]), ""]
    body += ["## 2. Throughput (benchmarks/throughput.py)", "", *steps_table([results["throughput_step"]]), ""]
    body += [results["throughput_text"] or "(not measured)", ""]
    body += ["## 3. Accuracy check (docs/speed.md)", "", *steps_table(results["accuracy"]), "",
             *accuracy_lines(results["accuracy"]), ""]  # fmt: skip
    body += [f"## 4. The 'to be measured' cells ({device})", "", "| where | now | value |", "|---|---|---|"]
    body += [f"| {name}:{n} | {cell(line[:90])} | {cell(value)} |" for name, n, line, value in fillings(results)]
    original, fast = disco_rows(results["throughput"])
    if original or fast:
        labelled = [("original (fp32, PIL workers)", original), ("fast (bf16, channels_last, --gpu-aug)", fast)]
        body += ["", "README.md's speed rows, ready to paste:", "", "```"]
        body += [readme_row(label, r) for label, r in labelled if r]
        body += ["```"]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(head + body) + "\n")
    return path


# -- main -------------------------------------------------------------------------------------


def budget_left(start, budget):
    return budget - (time.monotonic() - start)


@cli_main
def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    gpu = torch.cuda.is_available() and not args.dry_run
    profile = GPU if gpu else CPU
    if not gpu:
        why = "--dry-run" if args.dry_run else "no GPU is visible"
        print(f"=> {why}: a CPU dry run of the same steps at tiny sizes (not GPU figures)", flush=True)
    out, logs, runs = args.out, os.path.join(args.out, "logs"), os.path.join(args.out, "runs")
    os.makedirs(logs)
    inputs = os.path.join(out, "inputs")
    data = make_data(os.path.join(inputs, "data"), profile.data, seed=1)
    cifar = write_cifar10(os.path.join(inputs, "cifar"))
    teacher = write_swav_teacher(os.path.join(inputs, "swav_teacher.pth"), profile.small)
    # The accuracy check goes side by side with the smoke steps (neither is
    # timed); the throughput benchmark then runs alone.
    smoke = smoke_steps(profile, data, cifar, teacher, runs)
    accuracy = accuracy_steps(profile, os.path.join(inputs, "builtin"), runs)
    runner, threads = (Spawned, 2) if gpu else (Forked, max(1, (os.cpu_count() or 1) // profile.jobs))
    if runner is Forked:
        preload([s.argv[0] for s in smoke + accuracy] + ["benchmarks/throughput.py"])
    print(f"=> 1. every script on the {'GPU' if gpu else 'CPU'}, and 3. the accuracy check (fp32 against bf16 + "
          f"channels-last + --gpu-aug); report and logs in {out}", flush=True)  # fmt: skip
    run_steps(accuracy + smoke, profile.jobs, logs, runner, threads)  # the longest chain first
    results = {"smoke": smoke, "accuracy": read_accuracy(accuracy)}
    results["accuracy_done"] = all(s.status == "ok" for s in results["accuracy"])
    left = budget_left(start, args.budget)
    print(f"=> 2. benchmarks/throughput.py (alone; {max(left, 0):.0f} s of the budget left)", flush=True)
    results["throughput_step"], results["throughput_text"], results["throughput"] = run_throughput(
        profile, out, logs, runner, timeout=max(300.0, left)
    )
    results["device"] = machine_line(gpu).split(";")[0]
    report = write_report(out, gpu, results, time.monotonic() - start)
    failed = [s.key for s in [*smoke, *accuracy, results["throughput_step"]] if s.status != "ok"]
    print(f"=> report: {report}", flush=True)
    if failed:
        print(f"error: {len(failed)} step(s) did not pass: {', '.join(failed)} (see {report})", file=sys.stderr)
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
