#!/usr/bin/env python3
"""Small-scale analogue of the paper's Table 1 on the built-in dataset.

A MoCo-v2 teacher trained three times longer than the students (the paper's
teachers had 200-800 epochs against the students' 200); for each
lightweight student a MoCo-v2 baseline and a DisCo student distilled from
that teacher, with the same epochs; linear evaluation and kNN of all, and of
a random init. Writes results/tab1/table.md and results/tab1/tab1.png (bars).
It is a benchmark, not a test: about 40 minutes on a 2-core CPU at the
defaults (two steps side by side, as the demo).

    python benchmarks/tab1_small.py [--scale 0.5] [--teacher resnet50] [--students resnet18 mobilenetv3]
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from selfsup.cli import BUILTIN_DATA, REPO_ROOT  # noqa: E402
from selfsup.demo import CONFIG, read_table, run_pipeline  # noqa: E402


def bar_plot(rows, path):
    teacher = next(r for r in rows if r["name"] == "teacher")
    students = [r for r in rows if r["name"].startswith("student_moco")]
    fig, ax = plt.subplots(figsize=(3.6 + 1.6 * len(students), 3.6))
    xs = range(len(students))
    base = [r["acc1"] for r in students]
    disco = [next(d["acc1"] for d in rows if d["arch"] == r["arch"] and d["method"].startswith("DisCo")) for r in students]
    ax.bar([x - 0.2 for x in xs], base, 0.4, label="MoCo-v2 student", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], disco, 0.4, label="DisCo student", color="#2b7bb9")
    ax.axhline(teacher["acc1"], color="#c0392b", ls="--", label=f"teacher {teacher['arch']}")
    for r in rows:
        if r["name"] == "random_init":
            ax.axhline(r["acc1"], color="#555555", ls=":", label=f"random init {r['arch']}")
    for x, b, d in zip(xs, base, disco):
        ax.text(x - 0.2, b + 0.5, f"{b:.1f}", ha="center", fontsize=8)
        ax.text(x + 0.2, d + 0.5, f"{d:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [r["arch"] for r in students])
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("Built-in data: Table 1 analogue")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=BUILTIN_DATA)
    p.add_argument("--teacher", default="resnet34")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--students", nargs="+", default=["resnet18", "efficientb0"])
    p.add_argument("--student-epochs", type=int, default=10)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "tab1"))
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "results", "tab1"))
    p.add_argument("--replot", action="store_true", help="redraw tab1.png from an existing table.md, train nothing")
    args = p.parse_args()
    if args.replot:
        bar_plot(read_table(os.path.join(args.results, "table.md")), os.path.join(args.results, "tab1.png"))
        print(f"=> {args.results}/tab1.png")
        return
    config = dict(CONFIG, teacher={"arch": args.teacher, "epochs": args.teacher_epochs},
                  students=args.students, student_epochs=args.student_epochs)
    rows, table = run_pipeline(config, args.data, args.out, args.results, args.scale, pictures_too=False)
    bar_plot(rows, os.path.join(args.results, "tab1.png"))
    print(table)
    print(f"=> {args.results}/table.md, {args.results}/tab1.png")


if __name__ == "__main__":
    main()
