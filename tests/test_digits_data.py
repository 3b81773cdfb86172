"""scikit-learn's digits written as an ImageFolder tree (tools/tab1_small.py --data)."""

import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from selfsup.data.digits import prepare_digits


def test_digits_tree_holds_every_image_once_stratified_and_upscaled(tmp_path):
    root = tmp_path / "digits"
    assert prepare_digits(str(root), size=16, val_fraction=0.25, seed=3) == 1797
    digits = load_digits()
    seen = {}
    for split in ("train", "val"):
        for folder in sorted(os.listdir(root / split)):
            label = int(folder.split("_")[0])
            for name in os.listdir(root / split / folder):
                seen[int(name[:4])] = (split, label, root / split / folder / name)
    assert sorted(seen) == list(range(1797))  # each image exactly once
    for c in range(10):
        n = int((digits.target == c).sum())
        n_val = sum(1 for s, label, _ in seen.values() if label == c and s == "val")
        assert n_val == round(0.25 * n)
    for i in (0, 500, 1796):
        split, label, path = seen[i]
        assert label == digits.target[i]
        # Independent reference: grey levels 0-16 stretched to 0-255, bicubic to 16 px, three equal channels.
        grey = Image.fromarray((digits.images[i] * 255.0 / 16.0).astype(np.uint8)).resize((16, 16), Image.BICUBIC)
        got = np.asarray(Image.open(path))
        assert got.shape == (16, 16, 3)
        assert np.array_equal(got[..., 0], np.asarray(grey)) and np.array_equal(got[..., 0], got[..., 2])
    assert prepare_digits(str(root), size=16, val_fraction=0.25, seed=3) == 0  # complete: skipped
