"""Data folders at ImageNet's size (issue 23, item 1): the samples in numpy
arrays give torchvision's samples, targets and order; they hold no Python
object per image; the per-node scan cache is used only for the same,
unchanged tree; one scan lists each folder once; benchmarks/data_scale.py
--quick prints the before and after rows."""

import gc
import os
import pickle
import re
import shutil
import types

import numpy as np
import pytest
from conftest import REPO, run
from PIL import Image
from torchvision import datasets

from selfsup.core.errors import UserError
from selfsup.data import folders as D
from selfsup.data import scan as S
from selfsup.data import scan_cache
from selfsup.data.samples import SampleList, SampleTable, TargetList


def png(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (4, 4), (len(path) % 256, 0, 0)).save(path, format="PNG")


def nested_tree(root, per_folder=2):
    """Classes with nested folders, a linked class folder, file links and
    names that are not ASCII (one not even UTF-8)."""
    for folder in ("a", "a/sub", "a/sub/deep", "b/x/y", "c d", "é"):
        for k in range(per_folder):
            png(os.path.join(root, folder, f"{k}.png"))
    png(os.path.join(root, "é", "naïve.JPG"))
    outside = os.path.join(os.path.dirname(root), "outside")
    for k in range(per_folder):
        png(os.path.join(outside, f"o{k}.jpeg"))
    os.symlink(outside, os.path.join(root, "linked_class"))
    os.symlink(os.path.join(outside, "o0.jpeg"), os.path.join(root, "b", "link_to_o0.png"))
    with open(os.path.join(os.fsencode(root), b"c d", b"caf\xe9.png"), "wb") as f:  # Latin-1 byte: not UTF-8
        f.write(open(os.path.join(root, "a", "0.png"), "rb").read())
    return root


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv(scan_cache.ENV, "off")


def test_numpy_backed_dataset_is_torchvisions_imagefolder(tmp_path, no_cache):
    root = nested_tree(str(tmp_path / "data"))
    ours, theirs = D.image_folder(root, None), datasets.ImageFolder(root)
    assert isinstance(ours.samples, SampleList) and isinstance(ours.targets, TargetList)
    assert (ours.classes, ours.class_to_idx) == (theirs.classes, theirs.class_to_idx)
    assert list(ours.samples) == theirs.samples and ours.samples == theirs.samples
    assert list(ours.imgs) == theirs.imgs and list(ours.targets) == theirs.targets
    assert [ours.samples[i] for i in range(len(ours))] == theirs.samples == ours.samples[:]
    assert len(theirs.samples) == 17 and any("\udce9" in p for p, _ in theirs.samples)  # the undecodable byte
    assert (ours.root, ours.extensions, ours.transform, ours.target_transform) == (
        theirs.root,
        theirs.extensions,
        theirs.transform,
        theirs.target_transform,
    )
    for i in (0, 7, len(theirs) - 1):
        assert ours[i][1] == theirs[i][1] and ours[i][0].size == theirs[i][0].size
    copy = pickle.loads(pickle.dumps(ours))  # spawned workers get it this way
    assert copy.samples == theirs.samples and copy.targets == theirs.targets


def test_sample_list_reads_like_a_list(tmp_path, no_cache):
    root = nested_tree(str(tmp_path / "data"))
    ds, ref = D.image_folder(root, None), datasets.ImageFolder(root)
    s, t = ds.samples, ds.targets
    assert s[-1] == ref.samples[-1] and s[np.int64(3)] == ref.samples[3] and s[2:9:3] == ref.samples[2:9:3]
    assert t[-1] == ref.targets[-1] and type(t[0]) is int and type(s[0][1]) is int and t[1:4] == ref.targets[1:4]
    with pytest.raises(IndexError):
        s[len(s)]
    assert s * 2 == ref.samples * 2 and s + [("x", 0)] == ref.samples + [("x", 0)]
    assert s.index(ref.samples[5]) == 5 and ref.samples[4] in s and s != ref.samples[:-1]
    assert np.asarray(t) is ds.targets.array and np.asarray(t, dtype=np.int32).dtype == np.int32
    assert t != ref.targets[::-1] and t == ref.targets


def reachable(obj):
    """Every object reachable from `obj` through gc's referents (what a
    forked worker's reads would write reference counts into)."""
    seen, todo = {}, [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, (type, types.ModuleType, types.FunctionType)):
            continue
        seen[id(o)] = o
        todo.extend(gc.get_referents(o))
    return list(seen.values())


@pytest.mark.parametrize("per_folder", [2, 30])
def test_samples_hold_no_python_object_per_image(tmp_path, no_cache, per_folder):
    """Forked workers copy a page whenever they touch a Python object on it:
    the samples are a fixed handful of objects (three read-only numpy
    arrays, a prefix, a bytes buffer), however many images there are, and
    reading every sample leaves that unchanged."""
    ds = D.image_folder(nested_tree(str(tmp_path / "data"), per_folder), None)
    table = ds.samples.table
    for array in (table.blob, table.offsets, table.targets, ds.targets.array):
        assert isinstance(array, np.ndarray) and not array.flags.writeable
    assert ds.imgs.table is table and ds.targets.array is table.targets
    stored = reachable((ds.samples, ds.imgs, ds.targets))
    assert len(stored) <= 12, [type(o).__name__ for o in stored]
    assert not any(isinstance(o, (list, tuple, dict)) and len(o) >= len(ds) for o in stored)
    for i in range(len(ds)):
        ds.samples[i]
    assert sum(1 for _ in ds.samples) == len(ds) and len(reachable((ds.samples, ds.imgs, ds.targets))) == len(stored)


def test_assigned_lists_are_packed_and_stay_their_own_attributes(tmp_path, no_cache):
    """lincls --label and benchmarks/throughput.py assign lists, as they
    would to torchvision's attributes."""
    ds = D.image_folder(nested_tree(str(tmp_path / "data")), None)
    old = list(ds.samples)
    ds.samples = ds.samples * 2
    assert isinstance(ds.samples, SampleList) and len(ds) == 2 * len(old) and list(ds.imgs) == old
    ds.targets = [t for _, t in ds.samples]
    ds.imgs = ds.samples
    assert ds.imgs is ds.samples and ds.targets == [t for _, t in old] * 2 and ds.samples.table.prefix == ds.root + "/"
    ds.samples = [("/elsewhere/x.png", 1)] + old[:2]  # a path outside the root: stored whole
    assert ds.samples == [("/elsewhere/x.png", 1)] + old[:2] and ds.samples.table.prefix == ""


def test_lincls_label_subset_keeps_working(tiny_data, no_cache):
    from selfsup.engine.lincls import imagefolder_datasets

    ns = types.SimpleNamespace(data=tiny_data, image_size=16, label=50, seed=0)
    full = D.image_folder(os.path.join(tiny_data, "train"), None)
    train, val = imagefolder_datasets(ns)
    assert isinstance(train.samples, SampleList) and len(train) == 30  # half of each class's 6
    assert set(train.samples) <= set(full.samples) and train.imgs == train.samples
    assert train.targets == [t for _, t in train.samples] and sorted(set(train.targets)) == list(range(10))
    assert train[len(train) - 1][1] == train.samples[-1][1]


def test_one_scan_lists_each_folder_once(tmp_path, no_cache, monkeypatch):
    root = nested_tree(str(tmp_path / "data"))
    folders = sorted(os.path.join(top, "") for top, _, _ in os.walk(root, followlinks=True))
    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(os.fspath(path)) or real(path))
    ds = D.image_folder(root, None)
    assert sorted(os.path.join(p, "") for p in listed) == folders and len(ds) == 17


# -- the per-node scan cache ---------------------------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder that caches any tree, however small; mtimes are set an
    hour back by `age` so that none is too recent to trust."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(scan_cache.ENV, str(folder))
    monkeypatch.setattr(scan_cache, "MIN_SAMPLES", 1)
    walks = []
    real = S._scan
    monkeypatch.setattr(S, "_scan", lambda root, what: walks.append(root) or real(root, what))
    return types.SimpleNamespace(folder=str(folder), walks=walks)


def age(root):
    for top, _, _ in os.walk(root, followlinks=True):  # the linked class's folder too
        st = os.stat(top)
        os.utime(top, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))


def test_cache_serves_the_unchanged_tree_and_is_invalidated_by_an_added_file(tmp_path, cache):
    root = nested_tree(str(tmp_path / "data"))
    age(root)
    first = S.scan_image_folder(root)
    assert cache.walks == [root] and os.path.isfile(scan_cache.cache_file(cache.folder, root))
    again = S.scan_image_folder(root)
    assert cache.walks == [root] and again.samples == first.samples and again.classes == first.classes
    png(os.path.join(root, "a", "sub", "deep", "new.png"))  # deep inside: only that folder's mtime changes
    after = S.scan_image_folder(root)
    assert cache.walks == [root, root] and len(after.samples) == len(first.samples) + 1
    assert after.samples == datasets.ImageFolder(root).samples
    os.remove(os.path.join(root, "a", "sub", "deep", "new.png"))
    age(root)
    S.scan_image_folder(root)
    assert len(cache.walks) == 3 and S.scan_image_folder(root).samples == first.samples and len(cache.walks) == 3


def test_cache_is_never_used_for_another_root(tmp_path, cache):
    one, two = nested_tree(str(tmp_path / "one" / "data")), str(tmp_path / "two" / "data")
    png(os.path.join(two, "z", "only.png"))
    age(one), age(two)
    S.scan_image_folder(one)
    planted = scan_cache.cache_file(cache.folder, two)
    shutil.copyfile(scan_cache.cache_file(cache.folder, one), planted)  # one's scan under two's name
    assert S.scan_image_folder(two).samples == [(os.path.join(two, "z", "only.png"), 0)]
    assert cache.walks == [one, two]
    spelled = os.path.join(str(tmp_path), "one", ".", "data")  # the same folder spelled otherwise: its own file
    assert scan_cache.cache_file(cache.folder, spelled) != scan_cache.cache_file(cache.folder, one)
    assert S.scan_image_folder(spelled).samples[0][0].startswith(spelled + os.sep)
    os.rename(one, str(tmp_path / "one" / "old"))  # another tree moved in at the same path
    shutil.copytree(two, one)
    age(one)
    assert S.scan_image_folder(one).samples == [(os.path.join(one, "z", "only.png"), 0)]


def test_recent_changes_unsafe_folders_and_damaged_files_are_not_trusted(tmp_path, cache, capsys):
    root = nested_tree(str(tmp_path / "data"))
    S.scan_image_folder(root)  # just made: a change in the same clock tick could hide, so not cached
    assert not os.path.exists(scan_cache.cache_file(cache.folder, root)) and os.listdir(cache.folder) == []
    age(root)
    S.scan_image_folder(root)
    path = scan_cache.cache_file(cache.folder, root)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert S.scan_image_folder(root).samples == datasets.ImageFolder(root).samples and len(cache.walks) == 3
    png(os.path.join(root, "empty_class", "notes.txt"))  # refused (no images): no lock file is left either
    with pytest.raises(UserError, match="holds no images"):
        S.scan_image_folder(root)
    assert sorted(os.listdir(cache.folder)) == [os.path.basename(path)]
    shutil.rmtree(os.path.join(root, "empty_class"))
    os.chmod(cache.folder, 0o777)
    os.remove(path)
    S.scan_image_folder(root)
    assert not os.path.exists(path) and "yours alone" in capsys.readouterr().err


def test_cache_consistency_checks_refuse_a_broken_table(tmp_path):
    table = SampleTable("", np.frombuffer(b"ab", np.uint8), np.array([0, 1, 2]), np.array([0, 5]))
    assert not scan_cache._consistent(table, 2) and scan_cache._consistent(table, 6)
    assert not scan_cache._consistent(SampleTable("", table.blob, np.array([0, 2, 2]), table.targets), 6)


# -- the benchmark -------------------------------------------------------------
def table_rows(out, kind):
    return [line for line in out.splitlines() if line.startswith(f"| {kind} |")]


def test_benchmark_quick_prints_before_and_after(tmp_path):
    root = tmp_path / "scale"
    out = run(f"python3 benchmarks/data_scale.py --quick --loaders pretrain --root {root}", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = table_rows(out.stdout, "pretrain")
    assert len(rows) == 2 and "list of tuples (before)" in rows[0] and "numpy arrays" in rows[1]
    assert "5,000 training images (100 classes x 50)" in out.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and cells[4] == "1x" and re.fullmatch(r"[\d,]+ → [\d,]+, [\d,]+ → [\d,]+", cells[6])
    assert os.path.isfile(root / "100x50+10" / ".complete")


def test_benchmark_refuses_a_root_it_did_not_make(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("keep me")
    out = run(f"python3 benchmarks/data_scale.py --quick --root {root}", timeout=120)
    assert out.returncode == 2 and out.stdout.strip().splitlines() == [
        f"error: --root '{root}' holds files this benchmark did not make (no .made-by-benchmarks-data-scale in it): "
        "give an empty or new folder"
    ]
    assert sorted(os.listdir(root)) == ["thesis.tex"] and (root / "thesis.tex").read_text() == "keep me"


def test_benchmarks_before_path_builds_the_same_dataset(tmp_path, no_cache):
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_scale", os.path.join(REPO, "benchmarks", "data_scale.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    root = nested_tree(str(tmp_path / "data"))
    before, after = bench.legacy_image_folder(root, None), D.image_folder(root, None)
    assert type(before.samples) is list and type(before.samples[0]) is tuple and type(before.targets) is list
    assert before.samples == after.samples and before.targets == after.targets and before.classes == after.classes
