"""Saving a matplotlib figure whole or not at all."""

from __future__ import annotations

import os
from typing import Any

from selfsup.core.files import atomic_write


def save_figure(fig: Any, out_path: str | os.PathLike, dpi: int = 120) -> str | os.PathLike:
    """fig.savefig through atomic_write: a full disk (or a kill) never leaves
    a truncated picture under `out_path`. The format is the file's suffix
    (png when it has none), as matplotlib would pick from the name."""
    fmt = os.path.splitext(os.fspath(out_path))[1][1:].lower() or "png"
    with atomic_write(out_path, what="picture") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    return out_path
