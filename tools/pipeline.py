"""The teacher -> student -> evaluation pipeline that `make demo`
(tools/demo.py) and the Table 1 analogue (tools/tab1_small.py) run: it
runs the repository's own scripts, as a user would, two steps side by side,
and writes the table of accuracies (and, for the demo, the curves and t-SNE
pictures).

Every step is an argument list (no shell): a path with spaces, quotes or
non-ASCII letters reaches the scripts as it is, and the line printed for a
step (shlex.join) can be pasted into a shell. The inputs are checked before
any folder is touched, and the only folders it ever removes are the ones it
made itself: each holds a marker file (MARKER), and a rerun replaces a
marked folder that holds nothing but what the steps write (starting fresh,
as the runs are deterministic); any other folder in its way is refused.

Not part of the library: this orchestration knows the checkout's layout
(the scripts' folders, data/builtin, runs/, results/), which an installed
`selfsup` must not assume. Imported by its siblings in tools/ (a script's
folder is on sys.path) and by the tests (pytest's pythonpath = ["tools"]).
"""

import concurrent.futures
import csv
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import torch

from selfsup.analysis.knn import checkpoint_knn
from selfsup.core.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN_DATA = os.path.join(REPO_ROOT, "data", "builtin")


class StepFailed(RuntimeError):
    pass


def shown(cmd, cwd):
    """The line printed for a step: what a user pastes into a shell to run it."""
    return f"$ (cd {shlex.quote(os.path.relpath(cwd, REPO_ROOT))} && {shlex.join(cmd)})"


def usable_cpus():
    """The CPUs this process may run on (a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_plan(cpus=None, lanes=None, threads=None):
    """(lanes, threads per lane) for the machine: steps side by side, and the
    torch threads each gets, so that lanes x threads = the CPUs. Two lanes on
    a small machine (the teacher and the student baseline train together),
    three from 6 CPUs on (the random init's evaluation joins them); more
    lanes than the pipeline has independent steps would only sit idle."""
    cpus = cpus or usable_cpus()
    lanes = lanes or (1 if cpus == 1 else 2 if cpus < 6 else 3)
    return lanes, threads or max(1, cpus // lanes)


def sh(cmd, cwd, log, tag=None, threads=1):
    """Run one command (an argument list: no shell), stream its output to
    the terminal (lines prefixed by `tag` when steps run side by side) and
    to `log`, with `threads` torch threads (OMP_NUM_THREADS, unless the
    user's environment sets it)."""
    prefix = f"[{tag}] " if tag else ""
    print(f"\n{prefix}{shown(cmd, cwd)}", flush=True)
    start = time.time()
    with open(log, "w", buffering=1) as f:  # line-buffered: the log can be followed while it runs
        # Threads per step from cpu_plan: more threads than cores (steps run
        # side by side) makes OpenMP spin, 10x slower.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", str(threads))
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            f.write(line)
            if not line.startswith(("Test:",)) and ("Epoch:" not in line or "/" in line.split("]")[1][:8]):
                sys.stdout.write(prefix + line)
                sys.stdout.flush()
        proc.wait()
    if proc.returncode != 0:
        raise StepFailed(f"error: a step failed (exit {proc.returncode}); its output is above and in '{log}'")
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


# The export of a DisCo student, safetensors and ONNX, each checked (for the
# ETA only): 27-31 s for the demo's MobileNet-v3 on a 2-core machine whose
# cores a test run shared (2026-12-02), where a ResNet-18 epoch of the demo is
# about 17 CPU s (benchmarks/demo_breakdown.py).
EXPORT_COST = 1.5


def step_costs(rows, config, scale, export=False):
    """{step name: planned cost} of run_pipeline's steps."""
    costs = {}
    for r in rows:
        factor = ARCH_COST.get(r["arch"], 1.0)
        if r["epochs"]:
            teacher = ARCH_COST.get(config["teacher"]["arch"], 1.0) if r["method"].startswith("DisCo") else 0.0
            costs[f"pretrain {r['name']}"] = r["epochs"] * (factor + teacher)
        costs[f"evaluate {r['name']}"] = 0.25 * factor * scaled(config["lincls_epochs"], scale)
    if export:
        costs.update({f"export {r['name']}": EXPORT_COST for r in disco_rows(rows)})
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


# -- inputs, checked before anything is touched ---------------------------------------


def split_flags(text, flag):
    """A flag string (`--pretrain-flags "--lr 0.03 --cos"`) as the arguments
    a shell would make of it; an unbalanced quote is one line naming `flag`."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UserError(f"{flag} {text!r}: {exc}: expected flags as a shell splits them (every quote closed)") from None


def check_positive(flag, value, what="a number"):
    """A count or a scale given on the command line: finite and above 0."""
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{flag} {value}: expected {what} above 0")
    return value


def check_data(data, flag="--data"):
    """`data` is an ImageFolder tree: train/ and val/, each with class folders."""
    expected = "expected a folder holding train/CLASS/IMAGE and val/CLASS/IMAGE"
    if not os.path.isdir(data):
        what = "is not a folder" if os.path.exists(data) else "does not exist"
        raise UserError(f"{flag} '{data}' {what}: {expected}")
    for split in ("train", "val"):
        folder = os.path.join(data, split)
        if not os.path.isdir(folder):
            raise UserError(f"{flag} '{data}' has no {split}/ folder: {expected}")
        if not any(entry.is_dir() for entry in os.scandir(folder)):
            raise UserError(f"{flag} '{data}': {split}/ holds no class folder: {expected}")


def check_out(folder, flag):
    """An output folder (made if missing) must not be a file."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} '{folder}' is a file: expected a folder (or a path where one can be made)")


def check_inputs(config, data, runs, results):
    """Everything the pipeline can check before it starts: the data tree,
    the output folders and the flag strings (split as a shell would)."""
    flags = {key: split_flags(config[key], FLAG_OF[key]) for key in FLAG_OF}
    check_data(data)
    check_out(runs, "--out")
    check_out(results, "--results")
    return flags


# The config's flag strings and the flag of tools/tab1_small.py that sets each.
FLAG_OF = {
    "pretrain_flags": "--pretrain-flags",
    "disco_flags": "--disco-flags",
    "lincls_flags": "lincls_flags (tools/demo.py's CONFIG)",
}

# -- the folders this pipeline makes ------------------------------------------------

# Written into each folder the pipeline makes: only such a folder is ever removed.
MARKER = ".made-by-tools-pipeline"
MARKER_TEXT = (
    "This folder was made by tools/pipeline.py (make demo, tools/tab1_small.py). A rerun replaces it when it\n"
    "holds nothing but what the pipeline writes; with any other file in it the rerun stops and names it.\n"
)
# What the pipeline's steps write in the folders it makes.
OWN_ENTRIES = {
    *(MARKER, "ckpt", "lincls", "pretrain.log", "lincls.log", "export.log"),  # a model's folder
    *("export_safetensors.log", "export_onnx.log"),  # the DisCo student's exports (run_pipeline's export=True)
    *("draw.log", "curves.log", "curves_lincls.log"),  # the pictures' folder
}


def check_own_folder(folder, flag="--out"):
    """Whether `folder` exists; a folder that the pipeline did not make (no
    MARKER), or that holds a file it does not write, is one line: nothing of
    the user's is ever removed."""
    if not os.path.lexists(folder):
        return False
    if os.path.islink(folder) or not os.path.isdir(folder):
        raise UserError(
            f"{flag}: '{folder}' is in the pipeline's way and is not a folder it made: "
            f"move it away or use another {flag}; nothing was changed"
        )
    if not os.path.isfile(os.path.join(folder, MARKER)):
        raise UserError(
            f"{flag}: '{folder}' exists without the {MARKER} marker that this pipeline leaves in the folders "
            "it makes (a folder of yours, or of a demo older than the marker): "
            f"move it away or use another {flag}; nothing was changed"
        )
    foreign = sorted(set(os.listdir(folder)) - OWN_ENTRIES)
    if foreign:
        raise UserError(
            f"{flag}: '{folder}', which an earlier run of this pipeline made, holds files it did not write "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): move them away or use another "
            f"{flag}; nothing was changed"
        )
    return True


def fresh_folders(folders, flag="--out"):
    """Every folder of `folders` empty but for MARKER: all are checked first
    (check_own_folder), then an earlier run's are removed and all made anew."""
    earlier = [folder for folder in folders if check_own_folder(folder, flag)]
    for folder in earlier:
        shutil.rmtree(folder)
    for folder in folders:
        os.makedirs(folder)
        with open(os.path.join(folder, MARKER), "w") as f:
            f.write(MARKER_TEXT)
    if earlier:
        print(
            f"=> replaced {len(earlier)} folder(s) made by an earlier run of this pipeline "
            f"in '{os.path.dirname(folders[0])}'",
            flush=True,
        )


def planned_folders(rows, runs, pictures_too):
    """The folders run_pipeline makes in `runs`: one per model, and the pictures' logs."""
    return [r["folder"] for r in rows] + ([os.path.join(runs, PICTURES_LOGS)] if pictures_too else [])


def check_folders(config, runs, scale=1.0, pictures_too=True):
    """run_pipeline's check of its folders, for a caller that runs it several
    times (tools/tab1_small.py's seeds): each free, or one it made."""
    runs = os.path.abspath(runs)
    for folder in planned_folders(plan_rows(config, runs, scale), runs, pictures_too):
        check_own_folder(folder)


def plan_rows(config, runs, scale):
    """The models of the table: random init, the teacher, and per student arch
    a MoCo-v2 baseline and a DisCo student (their folders are not made here)."""
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
    return rows


def disco_rows(rows):
    return [r for r in rows if r["method"].startswith("DisCo")]


# -- the DisCo student's exports (make demo) -------------------------------------------

EXPORT_STEM = "disco_student"  # results/demo/disco_student.safetensors, .onnx
EXPORT_FORMATS = ("safetensors", "onnx")


def onnx_missing():
    """None when tools/export.py can write ONNX here, else its line saying what is missing."""
    from selfsup.export.writers import require_onnx

    try:
        require_onnx()
    except UserError as exc:
        return str(exc)
    return None


def load_line_of(log):
    """The line that loads an export: what tools/export.py prints after `=> load it with:`."""
    with open(log, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if "=> load it with:" not in lines[:-1]:
        raise StepFailed(f"error: the export step printed no load line; its output is in '{log}'")
    return lines[lines.index("=> load it with:") + 1]


def export_student(r, results, threads=1, py=sys.executable):
    """A DisCo student's query backbone, from its final checkpoint, into
    `results` as safetensors and ONNX: each by tools/export.py, which checks
    the written file against the checkpoint (features equal) and prints the
    line that loads it. `--force`: the results folder is the pipeline's, so a
    rerun replaces its earlier exports (the exporter never writes over the
    checkpoint, which is in the runs folder). Without onnx installed, the
    ONNX file is skipped with one line (and an earlier run's, which would not
    match this checkpoint, removed). Sets r["exports"] (format -> (file, load
    line)) and r["export_seconds"]."""
    stem = os.path.join(results, EXPORT_STEM + r["name"][len("student_disco") :])
    r["exports"] = {}
    start = time.time()
    for fmt in EXPORT_FORMATS:
        out = f"{stem}.{fmt}"
        missing = onnx_missing() if fmt == "onnx" else None
        if missing:
            earlier = os.path.isfile(out) and not os.path.islink(out)
            if earlier:
                os.remove(out)
            print(
                f"[{r['name']}] => no ONNX export: {missing}"
                + (f"; removed the earlier run's '{out}'" if earlier else ""),
                flush=True,
            )
            continue
        log = os.path.join(r["folder"], f"export_{fmt}.log")
        sh([py, "tools/export.py", r["ckpt"], "--out", out, "--force"], REPO_ROOT, log, r["name"], threads)
        r["exports"][fmt] = (out, load_line_of(log))
    r["export_seconds"] = time.time() - start


def run_pipeline(
    config,
    data,
    runs,
    results,
    scale=1.0,
    pictures_too=True,
    lanes=None,
    reference=None,
    seed=0,
    threads=None,
    export=False,
):
    """Teacher, then per student arch a MoCo-v2 baseline and a DisCo run, then
    linear evaluation (and kNN) of every model and of a random init, `lanes`
    steps side by side of `threads` torch threads each (cpu_plan's by
    default); with `export`, each DisCo student's final checkpoint is also
    exported to `results` (export_student) while the evaluations run.
    Returns (rows as dicts, markdown table)."""
    lanes, threads = cpu_plan(lanes=lanes, threads=threads)
    # The steps run in moco/ and DisCo/: every path they get is absolute.
    data, runs, results = os.path.abspath(data), os.path.abspath(runs), os.path.abspath(results)
    c, py = config, sys.executable
    flags = check_inputs(c, data, runs, results)
    rows = plan_rows(config, runs, scale)
    folders = planned_folders(rows, runs, pictures_too)
    os.makedirs(runs, exist_ok=True)
    fresh_folders(folders)
    os.makedirs(results, exist_ok=True)
    # --resume '': fresh runs (the scripts resume from their --ckpt-dir by default).
    common = ["-b", str(c["batch_size"]), "--image-size", str(c["image_size"]), "-j", "1", "-p", "20"]
    common += ["--seed", str(seed), "--resume", ""]
    teacher = rows[1]
    # The kNN probe runs in this process, beside a training step: one lane's threads.
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)

    def pretrain(r):
        args = ["-a", r["arch"], *common, *flags["pretrain_flags"], "--epochs", str(r["epochs"])]
        args += ["--ckpt-dir", os.path.join(r["folder"], "ckpt")]
        if r["method"].startswith("DisCo"):
            cmd = [py, "-u", "main.py", *args, *flags["disco_flags"], "--teacher_arch", teacher["arch"]]
            cmd += ["--teacher", teacher["ckpt"], data]
            cwd = os.path.join(REPO_ROOT, "DisCo")
        else:
            cmd = [py, "-u", "main_moco.py", *args, data]
            cwd = os.path.join(REPO_ROOT, "moco")
        r["seconds"] += sh(cmd, cwd, os.path.join(r["folder"], "pretrain.log"), r["name"], threads)

    def evaluate(r):
        cmd = [py, "-u", "main_lincls.py", "-a", r["arch"], *common, *flags["lincls_flags"]]
        cmd += ["--epochs", str(scaled(c["lincls_epochs"], scale))]
        cmd += ["--pretrained", r["ckpt"]] if r["ckpt"] else []
        cmd += ["--ckpt-dir", os.path.join(r["folder"], "lincls"), data]
        log = os.path.join(r["folder"], "lincls.log")
        r["seconds"] += sh(cmd, os.path.join(REPO_ROOT, "moco"), log, r["name"], threads)
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
    for r in disco_rows(rows) if export else []:  # beside the evaluations, once the student's checkpoint is final
        steps[f"export {r['name']}"] = ([f"pretrain {r['name']}"], lambda r=r: export_student(r, results, threads, py))
    progress = PipelineProgress(step_costs(rows, c, scale, export))
    try:
        run_steps(steps, lanes, on_done=progress.finished)
    finally:
        torch.set_num_threads(own_threads)

    table = markdown_table(rows) + "\n\n" + flags_line(c)
    if reference is not None:
        table += f"; reference step on this machine: {reference:.3f} s (ResNet-18 fwd+bwd, batch 64, 32 px, 1 thread)"
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write(table + "\n")
    if pictures_too:
        pictures(py, rows[1:], os.path.join(runs, PICTURES_LOGS), results, data, lanes * threads)
    return rows, table


# The folder (one the pipeline makes) of the picture steps' logs.
PICTURES_LOGS = "pictures"


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


def pictures(py, rows, logs, results, data, threads=1):
    """Training curves and t-SNE of the models (the analysis tools), one at
    a time with `threads` threads; their logs in `logs`, each model's export
    log in its own folder."""
    names = [r["name"] for r in rows]
    emb = os.path.join(results, "embeddings")
    for r in rows:
        sh(
            [py, "DisCo/export_embed.py", "-a", r["arch"], "--pretrained", r["ckpt"], "--name", r["name"]]
            + ["--out", emb, data],
            REPO_ROOT,
            os.path.join(r["folder"], "export.log"),
            threads=threads,
        )
    sh(
        [py, "-u", "draw.py", "--embed-dir", emb, "--names", *names, "--out", os.path.join(results, "tsne.png")],
        os.path.join(REPO_ROOT, "DisCo"),
        os.path.join(logs, "draw.log"),
        threads=threads,
    )
    for sub, log, png in (
        ("ckpt", "curves.log", "curves_pretrain.png"),
        ("lincls", "curves_lincls.log", "curves_lincls.png"),
    ):
        runs = [r["folder"] for r in rows]
        sh(
            [py, "-m", "selfsup.analysis.curves", *[os.path.join(f, sub) for f in runs], "--labels", *names]
            + ["--out", os.path.join(results, png)],
            REPO_ROOT,
            os.path.join(logs, log),
            threads=threads,
        )
