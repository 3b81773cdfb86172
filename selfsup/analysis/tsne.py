"""t-SNE scatter plots of embeddings, one panel per model.

Uses scikit-learn's TSNE and matplotlib with the Agg backend (headless).
Everything is seeded: the same inputs and seed give the same picture.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from selfsup.analysis.figures import save_figure
from selfsup.core.errors import UserError


def select_classes(
    labels: np.ndarray,
    classes: Iterable[int] | None = None,
    num_classes: int = 10,
    per_class: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of up to `per_class` samples of each chosen class.

    classes: label values to keep; None takes the `num_classes` smallest
    label values present. Samples within a class are drawn at random with
    `seed`, so every model with the same labels gets the same images.
    """
    labels = np.asarray(labels).reshape(-1)
    present = np.unique(labels)
    if classes is None:
        chosen = present[:num_classes]
    else:
        chosen = np.asarray(list(classes))
        missing = [int(c) for c in chosen if c not in present]
        if missing:
            raise UserError(
                f"classes {missing} do not occur in the labels "
                f"(present: {present.min()}..{present.max()}, {len(present)} classes)"
            )
    rng = np.random.default_rng(seed)
    keep = []
    for c in chosen:
        idx = np.flatnonzero(labels == c)
        if len(idx) > per_class:
            idx = rng.choice(idx, size=per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def tsne_2d(x: np.ndarray, seed: int = 0, perplexity: float = 30.0, threads: int | None = 1) -> np.ndarray:
    """2-D t-SNE of the rows of x (scikit-learn, PCA init, fixed seed).

    The perplexity is lowered to fit small inputs (scikit-learn needs
    perplexity < number of samples). `threads` caps the OpenMP/BLAS threads
    (None: no cap); one thread is the fastest for a few thousand points on a
    busy machine, where threads wait on each other."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"embeddings must be 2-D (samples x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserError("embeddings hold NaN or infinite values (did the training diverge?)")
    n = len(x)
    if n < 3:
        raise UserError(f"t-SNE needs at least 3 samples, got {n}")
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    model = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with threadpool_limits(limits=threads):
        return model.fit_transform(x)


def draw_panels(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    out_path: str | os.PathLike,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    point_size: float = 12,
    dpi: int = 120,
) -> str | os.PathLike:
    """Draw one scatter panel per model, side by side, and save a PNG.

    panels: list of (title, xy (N x 2), labels (N)). Colours are tied to
    label values, so a class has the same colour in every panel.
    class_names: optional mapping label -> name for the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise UserError("nothing to draw: no embeddings were given")
    all_labels = np.unique(np.concatenate([np.asarray(p[2]).reshape(-1) for p in panels]))
    cmap = plt.get_cmap("tab10" if len(all_labels) <= 10 else "tab20")
    colour = {lab: cmap(i % cmap.N) for i, lab in enumerate(all_labels)}

    legend_cols = 1 if len(all_labels) <= 20 else 2
    legend_w = 1.7 * legend_cols
    width = 4.2 * len(panels) + legend_w
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.4), squeeze=False)
    for ax, (title, xy, labels) in zip(axes[0], panels):
        xy = np.asarray(xy)
        labels = np.asarray(labels).reshape(-1)
        for lab in all_labels:
            m = labels == lab
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=point_size, color=colour[lab], linewidths=0)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colour[lab]) for lab in all_labels]
    names = [_name(lab, class_names) for lab in all_labels]
    fig.legend(
        handles,
        names,
        loc="center left",
        bbox_to_anchor=(1 - legend_w / width, 0.5),
        ncol=legend_cols,
        fontsize="small",
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1 - legend_w / width, 1))
    save_figure(fig, out_path, dpi)
    plt.close(fig)
    return out_path


def _name(label, class_names):
    if class_names is not None:
        try:
            return str(class_names[int(label)])
        except (IndexError, KeyError, ValueError):
            pass
    return str(label)
