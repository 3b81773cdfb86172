"""Semi-supervised subsets and the CIFAR reader."""

import os
import pickle
import re
import tarfile

import numpy as np
import pytest
from conftest import REPO, run
from layouts import pretend_official_cifar, write_cifar

from selfsup.core.errors import UserError
from selfsup.data.cifar import CIFAR
from selfsup.data.subset import balanced_subset, class_files, split_file_subset


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
    r = run(f"python3 -u imagenet_1_fraction.py --ratio 34 --balanced --source {tiny_data} --output {out}", cwd="data")
    assert r.returncode == 0, r.stdout
    counts = {c: len(os.listdir(out / "train" / c)) for c in os.listdir(out / "train")}
    assert len(counts) == 10 and set(counts.values()) == {3}  # ceil(0.34 * 6)
    assert sum(len(v) for v in class_files(str(out / "val")).values()) == 20


SHIPPED_SPLITS = {  # SimCLR's files as shipped (data/SIMCLR_SPLITS_NOTICE.md): names, classes, sha256
    "1percent.txt": (12811, 1000, "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17"),
    "10percent.txt": (128116, 1000, "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_SPLITS))
def test_shipped_split_files_are_simclrs(name):
    import hashlib

    path = os.path.join(REPO, "data", name)
    raw = open(path, "rb").read()
    names = raw.decode().split()
    count, classes, digest = SHIPPED_SPLITS[name]
    assert len(names) == len(set(names)) == count
    assert len({n.split("_")[0] for n in names}) == classes
    assert hashlib.sha256(raw).hexdigest() == digest


def test_ratio_1_copies_exactly_simclrs_list_by_default(tmp_path):
    """The original's `imagenet_1_fraction.py --ratio 1`: the files of
    1percent.txt, nothing else (one unlisted file per class is left out)."""
    listed = {(n.split("_")[0], n) for n in open(os.path.join(REPO, "data", "1percent.txt")).read().split()}
    src = tmp_path / "imagenet"
    for c in {c for c, _ in listed}:
        for split in ("train", "val"):
            (src / split / c).mkdir(parents=True)
        (src / "train" / c / f"{c}_unlisted.JPEG").write_bytes(b"")
        (src / "val" / c / f"ILSVRC2012_val_{c}.JPEG").write_bytes(b"")
    for c, n in listed:
        (src / "train" / c / n).write_bytes(b"")
    out = tmp_path / "imagenet_1_fraction"
    r = run(f"python3 -u imagenet_1_fraction.py --ratio 1 --source {src} --output {out} --link", cwd="data")
    assert r.returncode == 0, r.stdout[-2000:]
    got = {(c, f) for c in os.listdir(out / "train") for f in os.listdir(out / "train" / c)}
    assert got == listed
    assert len(os.listdir(out / "val")) == 1000


def test_ratio_10_reads_the_10_percent_list_and_others_need_a_choice(tiny_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("fraction", os.path.join(REPO, "data", "imagenet_1_fraction.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = ["--source", tiny_data]  # the default, data/builtin, may not exist yet
    assert module.parse_args(src + ["--ratio", "10"]).split_file == os.path.join(REPO, "data", "10percent.txt")
    assert module.parse_args(src).split_file == os.path.join(REPO, "data", "1percent.txt")
    assert module.parse_args(src + ["--ratio", "10", "--balanced"]).split_file is None
    with pytest.raises(UserError, match="--ratio 34"):
        module.parse_args(src + ["--ratio", "34"])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("as_archive", [False, True])
def test_cifar_reader_reads_the_standard_layout(tmp_path, monkeypatch, name, as_archive):
    monkeypatch.delenv("SELFSUP_UNSAFE_LOAD", raising=False)
    src = tmp_path / "src"
    parts, test, folder = write_cifar(str(src), name)
    pretend_official_cifar(monkeypatch, str(src / folder), name)  # unpacking keeps the bytes, so the md5s
    root = src
    if as_archive:
        root = tmp_path / "archived"
        root.mkdir()
        archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
        with tarfile.open(root / archive, "w:gz") as tar:
            tar.add(src / folder, arcname=folder)
    train = CIFAR(str(root), name, train=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    assert len(train) == 20 and train.targets == sum((p[key] for p in parts), [])
    img, label = train[3]
    first = parts[0]["data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert img.size == (32, 32) and np.array_equal(np.asarray(img), first) and label == parts[0][key][3]
    assert len(CIFAR(str(root), name, train=False)) == 10 and train.classes == [f"c{i}" for i in range(10)]


def test_cifar_file_missing_from_the_folder_is_named(tmp_path):
    _, _, folder = write_cifar(str(tmp_path), "cifar100")
    os.remove(tmp_path / folder / "meta")
    with pytest.raises(UserError, match=r"CIFAR file '.*cifar-100-python/meta' is missing"):
        CIFAR(str(tmp_path), "cifar100", train=False)


def test_cifar_reads_files_other_than_the_official_ones_only_under_unsafe_load(tmp_path, monkeypatch):
    parts, _, folder = write_cifar(str(tmp_path), "cifar10")
    monkeypatch.delenv("SELFSUP_UNSAFE_LOAD", raising=False)
    batches = ", ".join(
        f"'{tmp_path / folder / f}'" for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )
    with pytest.raises(
        UserError, match=re.escape(f"CIFAR files {batches} are not the official CIFAR-10 files") + ".*--unsafe-load"
    ):
        CIFAR(str(tmp_path), "cifar10")
    monkeypatch.setenv("SELFSUP_UNSAFE_LOAD", "1")  # what --unsafe-load sets: the user vouches for the files
    assert CIFAR(str(tmp_path), "cifar10").targets == sum((p["labels"] for p in parts), [])
    with open(tmp_path / folder / "test_batch", "wb") as f:
        pickle.dump({"pixels": [1, 2, 3]}, f)  # a pickle, but not a CIFAR batch
    with pytest.raises(UserError, match=r"are not CIFAR python pickles \(KeyError"):
        CIFAR(str(tmp_path), "cifar10", train=False)


def test_cifar_missing_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        CIFAR(str(tmp_path), "cifar10")
