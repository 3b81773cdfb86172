"""scikit-learn's handwritten digits as an ImageFolder tree: real images that
ship with a dependency, so the benchmark runs on more than the procedural set
without a download.

`sklearn.datasets.load_digits` holds 1,797 greyscale 8x8 images (grey levels
0-16) of the digits 0-9, about 180 each (the UCI "Optical Recognition of
Handwritten Digits" test set, CC BY 4.0; it is read from the installed
package, not copied into this repository). Each image is stretched to 0-255
and upscaled bicubically to `size` px, written as an RGB PNG (three equal
channels, as the MoCo-v2 pipeline expects). A seeded, class-stratified
`val_fraction` of each digit goes to val/.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

STAMP = ".complete"


def digit_image(pixels: np.ndarray, size: int) -> Image.Image:
    """One 8x8 array of grey levels 0-16 as a `size` px RGB PIL image."""
    grey = Image.fromarray(np.clip(pixels * 255.0 / 16.0, 0, 255).astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.BICUBIC).convert("RGB")


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> dict[int, str]:
    """{index: 'train' | 'val'}: per class, a seeded round(val_fraction * n) to val."""
    rng = np.random.default_rng(seed)
    split = {}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        split.update({int(i): "val" for i in idx[:n_val]})
        split.update({int(i): "train" for i in idx[n_val:]})
    return split


def prepare_digits(
    root: str | os.PathLike, size: int = 32, val_fraction: float = 0.25, seed: int = 0, force: bool = False
) -> int:
    """Write `root`/train and `root`/val (class folders 0_zero ... 9_nine).
    Skips a tree already complete for the same settings; returns the number
    of images written."""
    from sklearn.datasets import load_digits  # a dependency of the analysis tools already

    marker = os.path.join(root, STAMP)
    stamp = f"digits v1 {size} {val_fraction} {seed}"
    if not force and os.path.isfile(marker) and open(marker).read() == stamp:
        return 0
    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    split = split_indices(digits.target, val_fraction, seed)
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(root, split[i], f"{label}_{names[label]}")
        os.makedirs(folder, exist_ok=True)
        digit_image(pixels, size).save(os.path.join(folder, f"{i:04d}.png"))
    with open(marker, "w") as f:
        f.write(stamp)
    return len(digits.target)
