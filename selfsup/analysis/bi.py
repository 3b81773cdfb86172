"""The BI analysis over several models: binning estimates of I(X;T) and
I(T;Y) (see mutual_info.py) for a sweep of bin counts, as a table (CSV and
markdown) and a picture."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from selfsup.analysis.figures import save_figure
from selfsup.analysis.mutual_info import mi_by_binning
from selfsup.core.errors import UserError
from selfsup.core.files import atomic_write

FIELDS = ("name", "bins", "I_XT", "I_TY", "H_T", "H_Y", "n_distinct", "n")


def analyse(
    models: Iterable[tuple[str, np.ndarray, np.ndarray]],
    bins_list: Iterable[int],
    norm: str = "softmax",
    value_range: str = "data",
) -> list[dict[str, Any]]:
    """models: list of (name, embeddings, labels). Returns one row (dict with
    FIELDS) per model and bin count."""
    rows = []
    for name, embed, labels in models:
        for b in bins_list:
            est = mi_by_binning(embed, labels, n_bins=b, norm=norm, value_range=value_range)
            rows.append({"name": name, "bins": int(b), **est})
    return rows


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> str | os.PathLike:
    with atomic_write(path, "w", newline="", what="table") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in FIELDS})
    return path


def markdown_table(rows: Iterable[dict[str, Any]], bins: int | None = None) -> str:
    """Markdown table of the rows with `bins` bins (all rows when None)."""
    keep = [r for r in rows if bins is None or r["bins"] == bins]
    lines = [
        "| model | bins | I(X;T) bits | I(T;Y) bits | H(Y) bits | log2 N | distinct T | N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in keep:
        lines.append(
            f"| {r['name']} | {r['bins']} | {r['I_XT']:.3f} | {r['I_TY']:.3f} | {r['H_Y']:.3f} "
            f"| {math.log2(r['n']):.3f} | {r['n_distinct']} | {r['n']} |"
        )
    return "\n".join(lines) + "\n"


def plot(
    rows: Sequence[dict[str, Any]], out_path: str | os.PathLike, bins: int | None = None, dpi: int = 120
) -> str | os.PathLike:
    """Three panels: I(X;T) and I(T;Y) against the number of bins (one line
    per model, with the ceilings log2 N and H(Y) dashed), and the information
    plane I(T;Y) against I(X;T) with the `bins` point of each model marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise UserError("no MI estimates to plot")
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, name in enumerate(names):
        rs = sorted((r for r in rows if r["name"] == name), key=lambda r: r["bins"])
        b = np.array([r["bins"] for r in rs])
        ixt = np.array([r["I_XT"] for r in rs])
        ity = np.array([r["I_TY"] for r in rs])
        c = f"C{i % 10}"
        axes[0].plot(b, ixt, marker="o", color=c, label=name)
        axes[1].plot(b, ity, marker="o", color=c, label=name)
        axes[2].plot(ixt, ity, marker="o", markersize=3, color=c, alpha=0.6, label=name)
        for r in rs:
            if r["bins"] == bins:
                axes[2].scatter([r["I_XT"]], [r["I_TY"]], s=70, color=c, edgecolors="black", zorder=3)
    n_max = max(r["n"] for r in rows)
    h_y = max(r["H_Y"] for r in rows)
    axes[0].axhline(math.log2(n_max), ls="--", color="grey", lw=1, label="log2 N")
    axes[1].axhline(h_y, ls="--", color="grey", lw=1, label="H(Y)")
    for ax, title in zip(axes[:2], ("I(X;T) (bits)", "I(T;Y) (bits)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of bins")
        ax.set_title(title)
    plane_title = "information plane" + (f" (marked: {bins} bins)" if bins is not None else "")
    axes[2].set_title(plane_title)
    axes[2].set_xlabel("I(X;T) (bits)")
    axes[2].set_ylabel("I(T;Y) (bits)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, out_path, dpi)
    plt.close(fig)
    return out_path
