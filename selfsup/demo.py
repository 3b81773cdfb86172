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

# Sized to finish in under 15 minutes on an idle 2-core CPU at 32 px.
CONFIG = {
    "teacher": {"arch": "resnet34", "epochs": 7},
    "students": ["resnet18"],
    "student_epochs": 6,
    "image_size": 32,
    "batch_size": 64,
    "pretrain_flags": "--lr 0.03 --mlp --moco-t 0.2 --moco-m 0.99 --moco-k 1024 --aug-plus --cos --bn-splits 2",
    "lincls_flags": "--lr 0.05 --cos",
    "lincls_epochs": 6,
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


def run_pipeline(config, data, runs, results, scale=1.0, pictures_too=True):
    """Teacher, then per student arch a MoCo-v2 baseline and a DisCo run, then
    linear evaluation of every model. Returns the table rows as dicts."""
    c, py = config, sys.executable
    ep = lambda n: max(1, round(n * scale))  # noqa: E731
    os.makedirs(runs, exist_ok=True)
    os.makedirs(results, exist_ok=True)
    common = f"-b {c['batch_size']} --image-size {c['image_size']} -j 1 -p 20 --seed 0"
    t_arch = c["teacher"]["arch"]
    rows = [dict(name="teacher", method="MoCo-v2", arch=t_arch, epochs=ep(c["teacher"]["epochs"]))]
    for arch in c["students"]:
        e = ep(c["student_epochs"])
        suffix = "" if len(c["students"]) == 1 else f"_{arch}"
        rows.append(dict(name=f"student_moco{suffix}", method="MoCo-v2", arch=arch, epochs=e))
        rows.append(dict(name=f"student_disco{suffix}", method=f"DisCo <- {t_arch}", arch=arch, epochs=e))
    for r in rows:
        r["folder"] = os.path.join(runs, r["name"])
        r["ckpt"] = os.path.join(r["folder"], "ckpt", f"checkpoint_{r['epochs'] - 1:04d}.pth.tar")
        os.makedirs(r["folder"], exist_ok=True)
    teacher_ckpt = rows[0]["ckpt"]
    for r in rows:
        flags = f"-a {r['arch']} {common} {c['pretrain_flags']} --epochs {r['epochs']} --ckpt-dir {r['folder']}/ckpt"
        if r["method"].startswith("DisCo"):
            cmd = f"{py} -u main.py {flags} --teacher_arch {t_arch} --teacher {teacher_ckpt} {data}"
            cwd = os.path.join(REPO_ROOT, "DisCo")
        else:
            cmd = f"{py} -u main_moco.py {flags} {data}"
            cwd = os.path.join(REPO_ROOT, "moco")
        r["seconds"] = sh(cmd, cwd, os.path.join(r["folder"], "pretrain.log"))
    for r in rows:
        cmd = (f"{py} -u main_lincls.py -a {r['arch']} {common} {c['lincls_flags']} "
               f"--epochs {ep(c['lincls_epochs'])} --pretrained {r['ckpt']} "
               f"--ckpt-dir {r['folder']}/lincls {data}")
        r["seconds"] += sh(cmd, os.path.join(REPO_ROOT, "moco"), os.path.join(r["folder"], "lincls.log"))
        m = last_row(os.path.join(r["folder"], "lincls", "metrics.csv"))
        r["acc1"], r["acc5"] = float(m["acc1"]), float(m["acc5"])
    table = ["| model | method | arch | pretrain epochs | top-1 | top-5 | minutes |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['name']} | {r['method']} | {r['arch']} | {r['epochs']} | {r['acc1']:.1f} | {r['acc5']:.1f} "
              f"| {r['seconds'] / 60:.1f} |" for r in rows]
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    if pictures_too:
        pictures(py, rows, runs, results, data)
    return rows, "\n".join(table)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=BUILTIN_DATA)
    p.add_argument("--scale", type=float, default=float(os.environ.get("DEMO_SCALE", 1.0)),
                   help="multiply every epoch count (0.2: a quick smoke run)")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "demo"))
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "results", "demo"))
    p.add_argument("--batch-size", type=int, default=CONFIG["batch_size"])
    p.add_argument("--no-pictures", action="store_true")
    args = p.parse_args()
    start = time.time()
    _, table = run_pipeline(dict(CONFIG, batch_size=args.batch_size), args.data, args.out, args.results, args.scale, not args.no_pictures)
    print("\nLinear evaluation on the built-in dataset (val, 1000 images):\n" + table)
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min; table, curves and t-SNE in {args.results}")


def pictures(py, rows, runs, results, data):
    """Training curves and t-SNE of the models (the analysis tools)."""
    names = [r["name"] for r in rows]
    emb = os.path.join(results, "embeddings")
    for r in rows:
        sh(f"{py} DisCo/export_embed.py -a {r['arch']} --pretrained {r['ckpt']} --name {r['name']} --out {emb} {data}",
           REPO_ROOT, os.path.join(r["folder"], "export.log"))
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
