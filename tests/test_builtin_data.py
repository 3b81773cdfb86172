"""The procedural built-in dataset."""

import os

import numpy as np
from PIL import Image

from selfsup.data import augment
from selfsup.data import gpu_augment as G
from selfsup.data.builtin import CLASSES, make_image, prepare


def test_prepare_is_seeded_balanced_and_skips_a_complete_tree(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert prepare(str(a), train_per_class=2, val_per_class=1, size=24, seed=5) == 30
    assert prepare(str(b), train_per_class=2, val_per_class=1, size=24, seed=5) == 30
    for split, n in (("train", 2), ("val", 1)):
        folders = sorted(os.listdir(a / split))
        assert [f.split("_", 1)[1] for f in folders] == CLASSES
        for f in folders:
            files = sorted(os.listdir(a / split / f))
            assert len(files) == n
            for name in files:
                assert (a / split / f / name).read_bytes() == (b / split / f / name).read_bytes()
    assert prepare(str(a), train_per_class=2, val_per_class=1, size=24, seed=5) == 0  # already there
    assert prepare(str(a), train_per_class=2, val_per_class=1, size=24, seed=6) == 30  # a new seed redraws


def test_images_are_near_grey_so_colour_is_no_shortcut():
    # Per pixel, the channels differ by a faint tint only: saturated colour
    # would be an instance cue that MoCo's jitter leaves intact.
    spreads = []
    for label in range(len(CLASSES)):
        img = np.asarray(make_image(label, np.random.default_rng([0, label]), 40), dtype=np.float32)
        spreads.append((img.max(axis=2) - img.min(axis=2)).mean())
        assert img.std() > 30, CLASSES[label]  # a contrasting figure is there
    assert max(spreads) < 40


def test_blur_scales_with_the_image_size_on_cpu_and_gpu_paths():
    assert augment.blur_sigma(224) == (0.1, 2.0)  # the original's at its own size
    for size in (32, 96, 224):
        cpu_blur = augment.moco_v2_transform(size).transforms[3].transforms[0]
        assert cpu_blur.sigma == augment.blur_sigma(size) == G.moco_spec(True, size).blur_sigma
    img = Image.fromarray(np.uint8(np.random.default_rng(0).integers(0, 255, (32, 32, 3))))
    assert augment.moco_v2_transform(32)(img).shape == (3, 32, 32)
