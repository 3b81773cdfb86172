"""Labelled fractions of an ImageFolder train set (semi-supervised Fig5).

SimCLR published the 1% and 10% ImageNet subsets as lists of file names
(1percent.txt, 10percent.txt, one `n01440764_10026.JPEG` a line); with such a
file the subset is exactly that list. Without one, a seeded class-balanced
subset takes ceil(ratio% of each class) images."""

from __future__ import annotations

import math
import os
import random
import shutil

from selfsup.core.errors import UserError
from selfsup.data.folders import check_image_folder


def class_files(root: str, what: str = "source train folder") -> dict[str, list[str]]:
    """{class: its images, as paths relative to the class folder}, in the
    order the training scripts read them: the data folder scan's images
    (selfsup.data.scan), so a subset holds only what ImageFolder would
    train on, and a link cycle or a FIFO is refused before anything is
    copied."""
    scan = check_image_folder(root, what)
    out = {c: [] for c in scan.classes}
    # Each sample path starts with os.path.join(root, class) + "/": cut it (relpath is slow at 1.28 M files).
    cut = [len(os.path.join(scan.root, c, "")) for c in scan.classes]
    for path, target in scan.samples:
        out[scan.classes[target]].append(path[cut[target] :])
    return out


def balanced_subset(files_by_class: dict[str, list[str]], ratio: float, seed: int = 0) -> dict[str, list[str]]:
    """{class: chosen files}: ceil(ratio/100 * n) per class, seeded."""
    if not 0 < ratio <= 100:
        raise UserError(f"--ratio {ratio}: expected a percentage in (0, 100]")
    rng = random.Random(seed)
    chosen = {}
    for c, files in files_by_class.items():
        k = max(1, math.ceil(len(files) * ratio / 100))
        chosen[c] = sorted(rng.sample(files, k))
    return chosen


def split_file_subset(files_by_class: dict[str, list[str]], split_file: str) -> dict[str, list[str]]:
    """{class: files} named by a SimCLR split file (class = name before '_')."""
    if not os.path.isfile(split_file):
        raise UserError(f"--split-file '{split_file}' does not exist")
    wanted = [line.strip() for line in open(split_file) if line.strip()]
    chosen, missing = {}, []
    for name in wanted:
        c = name.split("_")[0]
        if name in files_by_class.get(c, ()):
            chosen.setdefault(c, []).append(name)
        else:
            missing.append(name)
    if missing:
        raise UserError(
            f"--split-file '{split_file}' names {len(missing)} files not in the source (first: {missing[0]})"
        )
    return chosen


def write_subset(source: str, out: str, chosen: dict[str, list[str]], link: bool = False) -> int:
    """Copy (or symlink) the chosen files into `out`/<class>/."""
    n = 0
    for c, files in chosen.items():
        os.makedirs(os.path.join(out, c), exist_ok=True)
        for f in files:
            src, dst = os.path.join(source, c, f), os.path.join(out, c, f)
            os.makedirs(os.path.dirname(dst), exist_ok=True)  # images in sub-folders of the class
            if os.path.lexists(dst):
                continue
            if link:
                os.symlink(os.path.abspath(src), dst)
            else:
                shutil.copy2(src, dst)
            n += 1
    return n
