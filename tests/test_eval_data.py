"""Semi-supervised subsets and the CIFAR reader."""
import os
import tarfile

import numpy as np
import pytest

from conftest import run
from layouts import write_cifar
from selfsup.cifar import CIFAR
from selfsup.errors import UserError
from selfsup.subset import balanced_subset, class_files, split_file_subset


def test_balanced_subset_is_balanced_and_reproducible():
    files = {f"n{c:03d}": [f"n{c:03d}_{i}.JPEG" for i in range(100 + 37 * c)] for c in range(4)}
    a = balanced_subset(files, 10, seed=1)
    assert [len(v) for v in a.values()] == [10, 14, 18, 22]  # ceil(10% of each class)
    assert a == balanced_subset(files, 10, seed=1)
    assert a != balanced_subset(files, 10, seed=2)
    assert all(set(a[c]) <= set(files[c]) for c in files)
    assert [len(v) for v in balanced_subset(files, 1).values()] == [1, 2, 2, 3]


def test_split_file_subset_takes_exactly_the_listed_files(tmp_path):
    files = {"n01": ["n01_1.JPEG", "n01_2.JPEG"], "n02": ["n02_7.JPEG"]}
    split = tmp_path / "1percent.txt"
    split.write_text("n01_2.JPEG\nn02_7.JPEG\n")
    assert split_file_subset(files, str(split)) == {"n01": ["n01_2.JPEG"], "n02": ["n02_7.JPEG"]}
    split.write_text("n01_9.JPEG\n")
    with pytest.raises(UserError, match="n01_9.JPEG"):
        split_file_subset(files, str(split))


def test_fraction_script_writes_a_subset_tree(tiny_data, tmp_path):
    out = tmp_path / "frac"
    r = run(f"python3 -u imagenet_1_fraction.py --ratio 34 --source {tiny_data} --output {out}", cwd="data")
    assert r.returncode == 0, r.stdout
    counts = {c: len(os.listdir(out / "train" / c)) for c in os.listdir(out / "train")}
    assert len(counts) == 10 and set(counts.values()) == {3}  # ceil(0.34 * 6)
    assert sum(len(v) for v in class_files(str(out / "val")).values()) == 20


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar_reader_reads_the_standard_layout(tmp_path, name, as_archive):
    src = tmp_path / "src"
    parts, test, folder = write_cifar(str(src), name)
    root = src
    if as_archive:
        root = tmp_path / "archived"
        root.mkdir()
        archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
        with tarfile.open(root / archive, "w:gz") as tar:
            tar.add(src / folder, arcname=folder)
    train = CIFAR(str(root), name, train=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    assert len(train) == 20 and train.targets == sum((list(p[key]) for p in parts), [])
    img, label = train[3]
    first = parts[0][b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.size == (32, 32) and np.array_equal(np.asarray(img), first)
    assert len(CIFAR(str(root), name, train=False)) == 10 and len(train.classes) == 10


def test_cifar_missing_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        CIFAR(str(tmp_path), "cifar10")
