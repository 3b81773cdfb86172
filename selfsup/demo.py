"""`make demo`: the whole teacher -> student -> evaluation pipeline on the
built-in dataset, on a CPU, through the same scripts a user runs.

1. MoCo-v2 teacher (moco/main_moco.py)
2. MoCo-v2 student baseline (moco/main_moco.py)
3. DisCo student distilled from that teacher (DisCo/main.py)
4. linear evaluation of all three (moco/main_lincls.py, same flags for each)
5. a table of top-1/top-5, training curves, t-SNE of the embeddings.

Everything lands in runs/demo/ (checkpoints, logs) and results/demo/
(table, pictures). Set DEMO_SCALE=0.2 for a quick smoke run.
"""
import argparse
import csv
import os
import subprocess
import sys
import time

from .cli import BUILTIN_DATA, REPO_ROOT

# Sized to finish in about 10 minutes of a 2-core CPU at 32 px.
CONFIG = {
    "teacher": {"arch": "resnet34", "epochs": 10},
    "student": {"arch": "resnet18", "epochs": 8},
    "image_size": 32,
    "batch_size": 64,
    "pretrain_flags": "--lr 0.06 --mlp --moco-t 0.2 --moco-m 0.99 --moco-k 1024 --aug-plus --cos --bn-splits 2",
    "lincls_flags": "--lr 1.0 --cos --epochs 10",
}


def sh(cmd, cwd, log):
    """Run one command line, stream its output to the terminal and to `log`."""
    print(f"\n$ (cd {os.path.relpath(cwd, REPO_ROOT)} && {cmd})", flush=True)
    start = time.time()
    with open(log, "w") as f:
        # One torch thread and one loader worker split the two cores of a
        # small machine cleanly; more threads than cores makes OpenMP spin.
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(cmd, shell=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            if not line.startswith(("Test:",)) and ("Epoch:" not in line or "/" in line.split("]")[1][:8]):
                sys.stdout.write(line)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"demo step failed (exit {proc.returncode}); its log: {log}")
    return time.time() - start


def last_row(metrics_csv):
    with open(metrics_csv) as f:
        return list(csv.DictReader(f))[-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=BUILTIN_DATA)
    p.add_argument("--scale", type=float, default=float(os.environ.get("DEMO_SCALE", 1.0)),
                   help="multiply every epoch count (0.2: a quick smoke run)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "demo"))
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "results", "demo"))
    p.add_argument("--no-pictures", action="store_true")
    args = p.parse_args()
    c = CONFIG
    py = sys.executable
    ep = lambda n: max(1, round(n * args.scale))  # noqa: E731
    size, bs = c["image_size"], c["batch_size"]
    runs, results = args.out, args.results
    os.makedirs(runs, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    start = time.time()
    common = f"-b {bs} --image-size {size} -j 1 -p 20 --seed 0"

    t_arch, s_arch = c["teacher"]["arch"], c["student"]["arch"]
    t_ep, s_ep = ep(c["teacher"]["epochs"]), ep(c["student"]["epochs"])
    rows = [("teacher", "MoCo-v2", t_arch, t_ep), ("student_moco", "MoCo-v2", s_arch, s_ep),
            ("student_disco", f"DisCo <- {t_arch}", s_arch, s_ep)]
    ckpt = {name: os.path.join(runs, name, "ckpt", f"checkpoint_{e - 1:04d}.pth.tar") for name, _, _, e in rows}
    timings = {}
    for name, method, arch, epochs in rows:
        folder = os.path.join(runs, name)
        os.makedirs(folder, exist_ok=True)
        flags = f"-a {arch} {common} {c['pretrain_flags']} --epochs {epochs} --ckpt-dir {folder}/ckpt"
        if name == "student_disco":
            cmd = f"{py} -u main.py {flags} --teacher_arch {t_arch} --teacher {ckpt['teacher']} {args.data}"
            cwd = os.path.join(REPO_ROOT, "DisCo")
        else:
            cmd = f"{py} -u main_moco.py {flags} {args.data}"
            cwd = os.path.join(REPO_ROOT, "moco")
        timings[name] = sh(cmd, cwd, os.path.join(folder, "pretrain.log"))
    for name, method, arch, epochs in rows:
        folder = os.path.join(runs, name)
        cmd = (f"{py} -u main_lincls.py -a {arch} {common} {c['lincls_flags']} --pretrained {ckpt[name]} "
               f"--ckpt-dir {folder}/lincls {args.data}")
        timings[name] += sh(cmd, os.path.join(REPO_ROOT, "moco"), os.path.join(folder, "lincls.log"))

    table = ["| model | method | arch | pretrain epochs | top-1 | top-5 | minutes |", "|---|---|---|---|---|---|---|"]
    for name, method, arch, epochs in rows:
        m = last_row(os.path.join(runs, name, "lincls", "metrics.csv"))
        table.append(f"| {name} | {method} | {arch} | {epochs} | {float(m['acc1']):.1f} | {float(m['acc5']):.1f} "
                     f"| {timings[name] / 60:.1f} |")
    text = "\n".join(table)
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write(text + "\n")
    if not args.no_pictures:
        pictures(py, rows, ckpt, runs, results, args.data)
    print("\nLinear evaluation on the built-in dataset (val, 1000 images):\n" + text)
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min; table, curves and t-SNE in {results}")


def pictures(py, rows, ckpt, runs, results, data):
    """Training curves and t-SNE of the three models (the analysis tools)."""
    names = [name for name, *_ in rows]
    emb = os.path.join(results, "embeddings")
    for name, _, arch, _ in rows:
        sh(f"{py} DisCo/export_embed.py -a {arch} --pretrained {ckpt[name]} --name {name} --out {emb} {data}",
           REPO_ROOT, os.path.join(runs, name, "export.log"))
    sh(f"{py} -u draw.py --embed-dir {emb} --names {' '.join(names)} --out {os.path.join(results, 'tsne.png')}",
       os.path.join(REPO_ROOT, "DisCo"), os.path.join(runs, "draw.log"))
    ck_dirs = " ".join(os.path.join(runs, n, "ckpt") for n in names)
    lin_dirs = " ".join(os.path.join(runs, n, "lincls") for n in names)
    labels = f"--labels {' '.join(names)}"
    sh(f"{py} -m selfsup.analysis.curves {ck_dirs} {labels} --out {os.path.join(results, 'curves_pretrain.png')}",
       REPO_ROOT, os.path.join(runs, "curves.log"))
    sh(f"{py} -m selfsup.analysis.curves {lin_dirs} {labels} --out {os.path.join(results, 'curves_lincls.png')}",
       REPO_ROOT, os.path.join(runs, "curves_lincls.log"))


if __name__ == "__main__":
    main()
