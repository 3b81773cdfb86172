"""Training curves from `metrics.csv` files.

Every training script writes one row per epoch to `<run>/metrics.csv`
(header row; columns such as epoch, lr, loss, loss_nce, loss_mse, acc1,
acc5). This module reads them and draws one panel per column, one line per
run.

    python -m selfsup.analysis.curves RUN_DIR [RUN_DIR ...] --out curves.png
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from selfsup.analysis.figures import save_figure
from selfsup.core.checks import FlagParser
from selfsup.core.errors import UserError, cli_main
from selfsup.core.files import refuse_overwriting

METRICS_FILE = "metrics.csv"
_TITLES = {"loss": "loss", "lr": "learning rate", "acc1": "top-1 (%)", "acc5": "top-5 (%)"}


def metrics_path(run: str | os.PathLike) -> Path:
    """The metrics CSV of a run: the path itself if it is a file, else
    `<run>/metrics.csv`."""
    run = Path(run)
    path = run if run.is_file() else run / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{path}: no metrics file (expected a run folder holding {METRICS_FILE}, or the CSV itself)")
    return path


def read_metrics(run: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a run's metrics CSV as float arrays (empty or non-numeric
    cells become NaN). Raises UserError for a file without header or rows."""
    path = metrics_path(run)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or not any(h.strip() for h in rows[0]):
        raise UserError(f"{path}: empty file, expected a header row such as 'epoch,lr,loss'")
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise UserError(f"{path}: header only, no epochs recorded yet")
    cols = {}
    for j, name in enumerate(header):
        if not name:
            continue
        cols[name] = np.array([_float(r[j]) if j < len(r) else math.nan for r in body])
    return cols


def _float(text):
    try:
        return float(text)
    except ValueError:
        return math.nan


def default_columns(runs: Sequence[dict[str, np.ndarray]]) -> list[str]:
    """Columns worth a panel, in a fixed order: loss, other *loss* columns,
    lr, acc1, acc5, then the rest; 'epoch', timing columns (epoch_time,
    pairs_per_s, ...) and all-NaN columns excluded."""
    seen = []
    for cols in runs:
        for name, values in cols.items():
            if name == "epoch" or "time" in name or name.endswith("_per_s"):
                continue
            if name not in seen and not np.all(np.isnan(values)):
                seen.append(name)

    def rank(name):
        if name == "loss":
            return (0, name)
        if "loss" in name:
            return (1, name)
        order = {"lr": 2, "acc1": 3, "acc5": 4}
        return (order.get(name, 5), name)

    return sorted(seen, key=rank)


def plot_curves(
    runs: Sequence[dict[str, np.ndarray]],
    out_path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    dpi: int = 120,
) -> str | os.PathLike:
    """Draw one panel per column with one line per run; save a PNG.

    runs: list of column dicts (from read_metrics). labels: legend names.
    columns: which columns to draw (default: default_columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not runs:
        raise UserError("no runs given")
    labels = labels or [f"run {i}" for i in range(len(runs))]
    columns = columns or default_columns(runs)
    if not columns:
        raise UserError("the metrics files hold no numeric columns to draw")
    for name in columns:
        if not any(name in cols for cols in runs):
            raise UserError(f"column {name!r} is in none of the metrics files")

    ncol = min(3, len(columns))
    nrow = math.ceil(len(columns) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.3 * nrow), squeeze=False)
    for k, name in enumerate(columns):
        ax = axes[k // ncol][k % ncol]
        for i, (cols, label) in enumerate(zip(runs, labels)):
            if name not in cols:
                continue
            y = cols[name]
            x = cols["epoch"] if "epoch" in cols else np.arange(len(y))
            ok = ~np.isnan(y) & ~np.isnan(x)
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, markersize=3, color=f"C{i % 10}", label=label)
        ax.set_title(_TITLES.get(name, name))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        xs = np.concatenate([c["epoch"] if "epoch" in c else np.arange(len(c[name])) for c in runs if name in c])
        xs = xs[~np.isnan(xs)]
        if xs.size and xs.min() == xs.max():  # a single epoch: centre it, one tick
            ax.set_xlim(xs[0] - 1, xs[0] + 1)
            ax.set_xticks([xs[0]])
        if name == "lr" or "loss" in name:
            values = np.concatenate([c[name] for c in runs if name in c])
            values = values[~np.isnan(values)]
            if values.size and values.min() > 0 and values.max() / values.min() > 100:
                ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    for k in range(len(columns), nrow * ncol):
        axes[k // ncol][k % ncol].axis("off")
    fig.tight_layout()
    save_figure(fig, out_path, dpi)
    plt.close(fig)
    return out_path


def run_label(run: str | os.PathLike) -> str:
    """Legend name of a run: its folder name (the parent's for ckpt/ folders
    or a CSV path)."""
    path = Path(run).resolve()
    if path.is_file():
        path = path.parent
    if path.name in ("ckpt", "checkpoints") and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def build_parser() -> argparse.ArgumentParser:
    p = FlagParser(
        description="Draw training curves (loss, lr, top-1, ...) of one or more runs from their metrics.csv files."
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder holding metrics.csv, or the CSV file itself")
    p.add_argument("--out", default="curves.png", help="output PNG (default: curves.png)")
    p.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: folder names)")
    p.add_argument(
        "--columns",
        nargs="+",
        default=None,
        help="columns to draw (default: loss*, lr, acc1, acc5 and any other numeric column)",
    )
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise UserError(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
    for run in args.runs:  # a CSV read is never the picture written
        refuse_overwriting(args.out, [("the metrics file", metrics_path(run))], "--out")
    runs = [read_metrics(r) for r in args.runs]
    labels = args.labels or [run_label(r) for r in args.runs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out, labels=labels, columns=args.columns)
    print(f"=> wrote {out}")


if __name__ == "__main__":
    main()
