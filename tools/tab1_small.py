#!/usr/bin/env python3
"""Small-scale analogue of the paper's Table 1 on the built-in dataset.

A MoCo-v2 teacher trained twice as long as the students (the paper's
teachers had 200-800 epochs against the students' 200); for each
lightweight student a MoCo-v2 baseline and a DisCo student distilled from
that teacher, with the same epochs; linear evaluation and kNN of all, and of
a random init. Writes results/tab1/table.md and results/tab1/tab1.png (bars).
The defaults are the demo's recipe (ResNet-18 teacher, 16 epochs; MobileNet-v3
student, 8 epochs): about 11 minutes per seed on a 2-core CPU on the built-in
data, two steps side by side. It is a benchmark, not a test.

    python tools/tab1_small.py [--scale 0.5] [--seeds 3] [--data data/digits]
        [--teacher resnet34 --teacher-epochs 30] [--students resnet18 efficientb0]

With --seeds N the whole table is repeated for seeds 0..N-1 (each in
results/tab1/seedK/) and results/tab1/table.md holds mean ± std per cell.
"""

import argparse
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Siblings in tools/ (this script's folder is on sys.path): the demo's
# recipe and the pipeline it runs.
from demo import CONFIG  # noqa: E402
from pipeline import (  # noqa: E402
    BUILTIN_DATA,
    REPO_ROOT,
    StepFailed,
    check_folders,
    check_inputs,
    check_positive,
    flags_line,
    read_table,
    run_pipeline,
)

from selfsup.core.checks import FlagParser  # noqa: E402
from selfsup.core.errors import UserError, cli_main  # noqa: E402

METRICS = ("knn", "acc1", "acc5", "minutes")


def metric(row, name):
    """A cell of a row: run_pipeline's rows carry seconds, a read table minutes."""
    if name == "minutes" and "minutes" not in row and "seconds" in row:
        return row["seconds"] / 60
    return row.get(name)


def summarise(tables):
    """Rows of several seeds' tables -> one row per model with the mean and
    the sample standard deviation (0 for one seed) of every metric."""
    out = []
    for rows in zip(*tables):
        assert len({r["name"] for r in rows}) == 1, "the seeds' tables list different models"
        row = {k: rows[0][k] for k in ("name", "method", "arch", "epochs")}
        for m in METRICS:
            values = [metric(r, m) for r in rows if metric(r, m) is not None]
            row[m] = statistics.fmean(values) if values else float("nan")
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["seeds"] = len(rows)
        out.append(row)
    return out


def summary_table(rows):
    """Markdown: mean ± std over the seeds for each cell."""
    cell = lambda r, m: f"{r[m]:.1f} ± {r[m + '_std']:.1f}"  # noqa: E731
    lines = [
        "| model | method | arch | pretrain epochs | seeds | kNN top-1 | linear top-1 | linear top-5 | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['method']} | {r['arch']} | {int(r['epochs'])} | {r['seeds']} | {cell(r, 'knn')} "
        f"| {cell(r, 'acc1')} | {cell(r, 'acc5')} | {r['minutes']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def bar_plot(rows, path):
    """Linear top-1 of each MoCo-v2 baseline beside its DisCo student, with
    error bars (one std over seeds) when the rows carry them."""
    teacher = next(r for r in rows if r["name"] == "teacher")
    students = [r for r in rows if r["name"].startswith("student_moco")]
    fig, ax = plt.subplots(figsize=(3.6 + 1.6 * len(students), 3.6))
    xs = range(len(students))
    disco_rows = [next(d for d in rows if d["arch"] == r["arch"] and d["method"].startswith("DisCo")) for r in students]
    base, disco = [r["acc1"] for r in students], [d["acc1"] for d in disco_rows]
    err = lambda rs: [r.get("acc1_std", 0.0) for r in rs] if any(r.get("acc1_std") for r in rs) else None  # noqa: E731
    ax.bar([x - 0.2 for x in xs], base, 0.4, yerr=err(students), capsize=3, label="MoCo-v2 student", color="#9aa5b1")
    ax.bar([x + 0.2 for x in xs], disco, 0.4, yerr=err(disco_rows), capsize=3, label="DisCo student", color="#2b7bb9")
    ax.axhline(teacher["acc1"], color="#c0392b", ls="--", label=f"teacher {teacher['arch']}")
    for r in rows:
        if r["name"] == "random_init":
            ax.axhline(r["acc1"], color="#555555", ls=":", label=f"random init {r['arch']}")
    for x, b, d in zip(xs, base, disco):
        ax.text(x - 0.2, b + 0.5, f"{b:.1f}", ha="center", fontsize=8)
        ax.text(x + 0.2, d + 0.5, f"{d:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [r["arch"] for r in students])
    ax.set_ylabel("linear top-1 (%)")
    seeds = rows[0].get("seeds", 1)
    ax.set_title(f"Table 1 analogue{f' (mean ± std, {seeds} seeds)' if seeds > 1 else ''}", fontsize=10)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def seed_results(results, seed, seeds):
    """Where one seed's table goes: results/ itself for a single seed."""
    return results if seeds == 1 else os.path.join(results, f"seed{seed}")


def seed_out(out, seed, seeds):
    """Where one seed's runs go: --out itself for a single seed."""
    return out if seeds == 1 else os.path.join(out, f"seed{seed}")


def check_args(args):
    """The counts, the students and (unless only replotting) the data, the
    output folders and the flag strings, before anything is run or written."""
    check_positive("--seeds", args.seeds, "an integer")
    if args.replot:
        return
    check_positive("--scale", args.scale)
    check_positive("--teacher-epochs", args.teacher_epochs, "an integer")
    check_positive("--student-epochs", args.student_epochs, "an integer")
    twice = sorted({a for a in args.students if args.students.count(a) > 1})
    if twice:
        raise UserError(f"--students {' '.join(args.students)}: {', '.join(twice)} listed twice (each arch once)")
    config = pipeline_config(args)
    check_inputs(config, os.path.abspath(args.data), os.path.abspath(args.out), args.results)
    for seed in range(args.seeds):  # every seed's folders, before the first seed runs
        check_folders(config, seed_out(args.out, seed, args.seeds), args.scale, pictures_too=False)


def pipeline_config(args):
    """The demo's recipe with this run's changes."""
    return dict(
        CONFIG,
        teacher={"arch": args.teacher, "epochs": args.teacher_epochs},
        students=args.students,
        student_epochs=args.student_epochs,
        pretrain_flags=args.pretrain_flags,
        disco_flags=args.disco_flags,
    )


def read_seed_table(results):
    """A seed's table.md for --replot; a missing one is one line."""
    path = os.path.join(results, "table.md")
    if not os.path.isfile(path):
        raise UserError(f"--replot: no table at '{path}' (expected the table.md that a run with these --results wrote)")
    return read_table(path)


@cli_main
def main():
    p = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=BUILTIN_DATA, help="train/ and val/ (data/builtin; `make digits`: data/digits)")
    # Defaults: the demo's recipe (tools/demo.py's CONFIG), which shows DisCo's gain
    # on both data sets; the paper's other students and teachers by flag.
    p.add_argument("--teacher", default=CONFIG["teacher"]["arch"])
    p.add_argument("--teacher-epochs", type=int, default=CONFIG["teacher"]["epochs"])
    p.add_argument("--students", nargs="+", default=list(CONFIG["students"]))
    p.add_argument("--student-epochs", type=int, default=CONFIG["student_epochs"])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument(
        "--pretrain-flags",
        default=CONFIG["pretrain_flags"],
        help="flags of every pretraining step, teacher and students (the demo's by default)",
    )
    p.add_argument(
        "--disco-flags", default=CONFIG["disco_flags"], help="flags of the DisCo step (the demo's by default)"
    )
    p.add_argument("--seeds", type=int, default=1, help="repeat the whole table over seeds 0..N-1: mean ± std")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "tab1"))
    p.add_argument("--results", default=os.path.join(REPO_ROOT, "results", "tab1"))
    p.add_argument("--replot", action="store_true", help="redraw from the written tables, train nothing")
    args = p.parse_args()
    check_args(args)
    tables = []
    for seed in range(args.seeds):
        results = seed_results(args.results, seed, args.seeds)
        if args.replot:
            tables.append(read_seed_table(results))
            continue
        out = seed_out(args.out, seed, args.seeds)
        try:
            rows, table = run_pipeline(
                pipeline_config(args), args.data, out, results, args.scale, pictures_too=False, seed=seed
            )
        except StepFailed as exc:
            sys.exit(str(exc))
        print(f"seed {seed}:\n{table}", flush=True)
        tables.append(rows)
    if args.seeds == 1:
        rows = tables[0]
    else:
        rows = summarise(tables)
        with open(os.path.join(args.results, "table.md"), "w") as f:
            f.write(summary_table(rows) + f"\n\n{flags_line(vars(args))}; data: {args.data}\n")
        print(summary_table(rows))
    bar_plot(rows, os.path.join(args.results, "tab1.png"))
    print(f"=> {args.results}/table.md, {args.results}/tab1.png")


if __name__ == "__main__":
    main()
