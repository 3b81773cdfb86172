"""The teacher -> student -> evaluation pipeline that `make demo`
(tools/demo.py) and the Table 1 analogue (tools/tab1_small.py) run: it
shells out to the repository's own scripts, as a user would, two steps side
by side, and writes the table of accuracies (and, for the demo, the curves
and t-SNE pictures).

Not part of the library: this orchestration knows the checkout's layout
(the scripts' folders, data/builtin, runs/, results/), which an installed
`selfsup` must not assume. Imported by its siblings in tools/ (a script's
folder is on sys.path) and by the tests (pytest's pythonpath = ["tools"]).
"""

import concurrent.futures
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time

import torch

from selfsup.analysis.knn import checkpoint_knn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN_DATA = os.path.join(REPO_ROOT, "data", "builtin")


class StepFailed(RuntimeError):
    pass


def sh(cmd, cwd, log, tag=None):
    """Run one command line, stream its output to the terminal (lines
    prefixed by `tag` when steps run side by side) and to `log`."""
    prefix = f"[{tag}] " if tag else ""
    print(f"\n{prefix}$ (cd {os.path.relpath(cwd, REPO_ROOT)} && {cmd})", flush=True)
    start = time.time()
    with open(log, "w", buffering=1) as f:  # line-buffered: the log can be followed while it runs
        # One torch thread per process: two steps share the two cores of a
        # small machine, and more threads than cores makes OpenMP spin.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(
            cmd, shell=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            f.write(line)
            if not line.startswith(("Test:",)) and ("Epoch:" not in line or "/" in line.split("]")[1][:8]):
                sys.stdout.write(prefix + line)
                sys.stdout.flush()
        proc.wait()
    if proc.returncode != 0:
        raise StepFailed(f"demo step failed (exit {proc.returncode}); its log: {log}")
    return time.time() - start


def run_steps(steps, lanes, on_done=None):
    """Run `steps` (name -> (needs, fn)) with at most `lanes` at a time, each
    as soon as the steps it needs are done, earlier-listed first;
    `on_done(name)` after each."""
    pending, done, running = dict(steps), set(), {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=lanes) as pool:
        while pending or running:
            for name, (needs, fn) in list(pending.items()):
                if len(running) < lanes and set(needs) <= done:
                    running[pool.submit(fn)] = name
                    del pending[name]
            if not running:
                raise RuntimeError(f"demo steps wait on missing steps: {sorted(pending)}")
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                fut.result()  # a failed step stops the demo here
                name = running.pop(fut)
                done.add(name)
                if on_done:
                    on_done(name)


class PipelineProgress:
    """One line per finished step: how many of how many, elapsed time, and an
    estimate of the time left from the work done so far. Each step has a
    planned cost (epochs times a rough per-arch factor), so the estimate is
    elapsed / done cost * remaining cost."""

    def __init__(self, costs):
        self.costs, self.done, self.start = dict(costs), set(), time.time()

    def finished(self, name):
        self.done.add(name)
        elapsed = time.time() - self.start
        done = sum(self.costs[n] for n in self.done)
        left = sum(c for n, c in self.costs.items() if n not in self.done)
        eta = elapsed / done * left if done else float("nan")
        line = f"[demo] {len(self.done)}/{len(self.costs)} steps done ({name}); elapsed {elapsed / 60:.1f} min" + (
            f", about {eta / 60:.1f} min left" if left else ""
        )
        print(line, flush=True)
        return line


# Rough cost of one epoch relative to a ResNet-18 MoCo epoch (for the ETA only).
ARCH_COST = {"resnet34": 2.0, "resnet50": 3.0, "efficientb0": 3.0, "efficientb1": 4.0, "mobilenetv3": 1.3}


def step_costs(rows, config, scale):
    """{step name: planned cost} of run_pipeline's steps."""
    costs = {}
    for r in rows:
        factor = ARCH_COST.get(r["arch"], 1.0)
        if r["epochs"]:
            teacher = ARCH_COST.get(config["teacher"]["arch"], 1.0) if r["method"].startswith("DisCo") else 0.0
            costs[f"pretrain {r['name']}"] = r["epochs"] * (factor + teacher)
        costs[f"evaluate {r['name']}"] = 0.25 * factor * scaled(config["lincls_epochs"], scale)
    return costs


def reference_step_seconds(repeats=5):
    """This machine's time for a fixed step, so that demo timings carry
    between machines: torchvision ResNet-18 forward and backward, batch 64,
    32 px, one thread; the median of `repeats` after one warm-up."""
    import torchvision

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        x, y = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)


def last_row(metrics_csv):
    with open(metrics_csv) as f:
        return list(csv.DictReader(f))[-1]


def scaled(epochs, scale):
    """An epoch count times --scale, at least 1."""
    return max(1, round(epochs * scale))


def plan_rows(config, runs, scale):
    """The models of the table: random init, the teacher, and per student arch
    a MoCo-v2 baseline and a DisCo student."""
    c = config
    ep = lambda n: scaled(n, scale)  # noqa: E731
    t_arch = c["teacher"]["arch"]
    rows = [
        dict(name="random_init", method="none", arch=c["students"][0], epochs=0),
        dict(name="teacher", method="MoCo-v2", arch=t_arch, epochs=ep(c["teacher"]["epochs"])),
    ]
    for arch in c["students"]:
        e = ep(c["student_epochs"])
        suffix = "" if len(c["students"]) == 1 else f"_{arch}"
        rows.append(dict(name=f"student_moco{suffix}", method="MoCo-v2", arch=arch, epochs=e))
        rows.append(dict(name=f"student_disco{suffix}", method=f"DisCo <- {t_arch}", arch=arch, epochs=e))
    for r in rows:
        r["folder"] = os.path.join(runs, r["name"])
        r["ckpt"] = (
            os.path.join(r["folder"], "ckpt", f"checkpoint_{r['epochs'] - 1:04d}.pth.tar") if r["epochs"] else None
        )
        r["seconds"] = 0.0
        shutil.rmtree(r["folder"], ignore_errors=True)  # the demo's own folders: every run starts fresh
        os.makedirs(r["folder"])
    return rows


def run_pipeline(config, data, runs, results, scale=1.0, pictures_too=True, lanes=2, reference=None, seed=0):
    """Teacher, then per student arch a MoCo-v2 baseline and a DisCo run, then
    linear evaluation (and kNN) of every model and of a random init, `lanes`
    steps side by side. Returns (rows as dicts, markdown table)."""
    # The steps run in moco/ and DisCo/: every path they get is absolute.
    data, runs, results = os.path.abspath(data), os.path.abspath(runs), os.path.abspath(results)
    c, py = config, sys.executable
    os.makedirs(runs, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    # --resume '': fresh runs (the scripts resume from their --ckpt-dir by default).
    common = f"-b {c['batch_size']} --image-size {c['image_size']} -j 1 -p 20 --seed {seed} --resume ''"
    rows = plan_rows(config, runs, scale)
    teacher = rows[1]
    # The kNN probe runs in this process, beside a training step: one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def pretrain(r):
        flags = f"-a {r['arch']} {common} {c['pretrain_flags']} --epochs {r['epochs']} --ckpt-dir {r['folder']}/ckpt"
        if r["method"].startswith("DisCo"):
            cmd = (
                f"{py} -u main.py {flags} {c['disco_flags']} --teacher_arch {teacher['arch']} "
                f"--teacher {teacher['ckpt']} {data}"
            )
            cwd = os.path.join(REPO_ROOT, "DisCo")
        else:
            cmd = f"{py} -u main_moco.py {flags} {data}"
            cwd = os.path.join(REPO_ROOT, "moco")
        r["seconds"] += sh(cmd, cwd, os.path.join(r["folder"], "pretrain.log"), r["name"])

    def evaluate(r):
        pretrained = f"--pretrained {r['ckpt']} " if r["ckpt"] else ""
        cmd = (
            f"{py} -u main_lincls.py -a {r['arch']} {common} {c['lincls_flags']} "
            f"--epochs {scaled(c['lincls_epochs'], scale)} {pretrained}"
            f"--ckpt-dir {r['folder']}/lincls {data}"
        )
        r["seconds"] += sh(cmd, os.path.join(REPO_ROOT, "moco"), os.path.join(r["folder"], "lincls.log"), r["name"])
        m = last_row(os.path.join(r["folder"], "lincls", "metrics.csv"))
        r["acc1"], r["acc5"] = float(m["acc1"]), float(m["acc5"])
        start = time.time()
        r["knn"] = checkpoint_knn(r["arch"], r["ckpt"], data, c["image_size"], seed=seed)
        r["seconds"] += time.time() - start
        print(f"[{r['name']}] kNN top-1 {r['knn']:.1f}", flush=True)

    # Pretraining first (the teacher before all: DisCo waits for it), then
    # the evaluations as their checkpoints appear.
    steps = {}
    for r in rows[1:]:
        steps[f"pretrain {r['name']}"] = (
            [f"pretrain {teacher['name']}"] if r["method"].startswith("DisCo") else [],
            lambda r=r: pretrain(r),
        )
    for r in rows:
        steps[f"evaluate {r['name']}"] = ([f"pretrain {r['name']}"] if r["epochs"] else [], lambda r=r: evaluate(r))
    progress = PipelineProgress(step_costs(rows, c, scale))
    try:
        run_steps(steps, lanes, on_done=progress.finished)
    finally:
        torch.set_num_threads(threads)

    table = markdown_table(rows) + "\n\n" + flags_line(c)
    if reference is not None:
        table += f"; reference step on this machine: {reference:.3f} s (ResNet-18 fwd+bwd, batch 64, 32 px, 1 thread)"
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write(table + "\n")
    if pictures_too:
        pictures(py, rows[1:], runs, results, data)
    return rows, table


TABLE_HEADER = ["model", "method", "arch", "pretrain epochs", "kNN top-1", "linear top-1", "linear top-5", "minutes"]


def markdown_table(rows):
    """The results table (table.md) of run_pipeline's rows."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += [
        f"| {r['name']} | {r['method']} | {r['arch']} | {r['epochs']} | {r['knn']:.1f} | {r['acc1']:.1f} "
        f"| {r['acc5']:.1f} | {r['seconds'] / 60:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def flags_line(config):
    """What the table's runs passed beyond the scripts' defaults."""
    return f"Pretraining flags: `{config['pretrain_flags']}`; DisCo flags: `{config['disco_flags']}`"


def read_table(path):
    """Rows back from a table.md that markdown_table wrote (numbers as floats)."""
    lines = [line for line in open(path).read().splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    keys = dict(zip(TABLE_HEADER, ["name", "method", "arch", "epochs", "knn", "acc1", "acc5", "minutes"]))
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = {keys[h]: c for h, c in zip(header, cells)}
        rows.append({k: (v if k in ("name", "method", "arch") else float(v)) for k, v in row.items()})
    return rows


def pictures(py, rows, runs, results, data):
    """Training curves and t-SNE of the models (the analysis tools)."""
    names = [r["name"] for r in rows]
    emb = os.path.join(results, "embeddings")
    for r in rows:
        sh(
            f"{py} DisCo/export_embed.py -a {r['arch']} --pretrained {r['ckpt']} --name {r['name']} --out {emb} {data}",
            REPO_ROOT,
            os.path.join(r["folder"], "export.log"),
        )
    sh(
        f"{py} -u draw.py --embed-dir {emb} --names {' '.join(names)} --out {os.path.join(results, 'tsne.png')}",
        os.path.join(REPO_ROOT, "DisCo"),
        os.path.join(runs, "draw.log"),
    )
    ck_dirs = " ".join(os.path.join(runs, n, "ckpt") for n in names)
    lin_dirs = " ".join(os.path.join(runs, n, "lincls") for n in names)
    labels = f"--labels {' '.join(names)}"
    sh(
        f"{py} -m selfsup.analysis.curves {ck_dirs} {labels} --out {os.path.join(results, 'curves_pretrain.png')}",
        REPO_ROOT,
        os.path.join(runs, "curves.log"),
    )
    sh(
        f"{py} -m selfsup.analysis.curves {lin_dirs} {labels} --out {os.path.join(results, 'curves_lincls.png')}",
        REPO_ROOT,
        os.path.join(runs, "curves_lincls.log"),
    )
