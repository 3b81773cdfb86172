#!/usr/bin/env python3
"""Data folders at ImageNet's size: how long a rank takes from its start to
its first batch, how much memory the main process and each DataLoader worker
hold after one pass over the index list, and the pipeline's images/s, for
the pretraining loader (MoCo's two crops) and the linear-evaluation loader,
with the sample list stored as before (a Python list of (path, class)
tuples, torchvision's) and as now (numpy arrays, selfsup.data.samples), in
one run (docs/speed.md, "Data folders at ImageNet's size").

The tree is ImageNet-shaped (1,000 class folders x 1,281 training files, 50
validation files per class) and cheap: every file is a hard link to one of a
few small real JPEGs, so it costs directory entries, not gigabytes. It is
built once under --root and reused.

  python benchmarks/data_scale.py                 # 1.28 M files (build: a few minutes, once)
  python benchmarks/data_scale.py --quick         # 100 x 50 files, seconds (tests/test_data_scale.py)
"""

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from selfsup.core.errors import UserError, cli_main

MARKER = ".made-by-benchmarks-data-scale"
SOURCES = 32  # distinct JPEGs; each is linked ~40,000 times at full size (ext4 allows 65,000 links)
ENTRY_BYTES = 64  # a directory entry's cost on disk, roughly, to check the free space first


# -- the tree ----------------------------------------------------------------------
def tree_path(args):
    return os.path.join(args.root, f"{args.classes}x{args.files_per_class}+{args.val_per_class}")


def _class_name(c):
    return f"n{c:08d}"  # ImageNet's WordNet-id shape


def _train_name(c, j):
    return f"n{c:08d}_{j}.JPEG"


def _val_name(c, j, per_class):
    return f"ILSVRC2012_val_{c * per_class + j + 1:08d}.JPEG"


def _check_root(root):
    """--root is this benchmark's folder (its marker inside) or does not exist yet."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"--root '{root}' is a file, expected a folder this benchmark may build in")
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(os.path.join(root, MARKER)):
        raise UserError(
            f"--root '{root}' holds files this benchmark did not make (no {MARKER} in it): give an empty or new folder"
        )


def _check_space(root, entries, folders):
    """Refuse in one line, before writing, when the filesystem lacks the
    inodes (one per folder and per source JPEG: hard links take none) or
    the space the directory entries need."""
    probe = root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    st = os.statvfs(probe)
    need_inodes = folders + SOURCES + 16
    if st.f_files and st.f_favail < need_inodes:
        raise UserError(
            f"--root '{root}': its filesystem has {st.f_favail:,} free inodes (df -i), the tree needs "
            f"{need_inodes:,}: choose another --root"
        )
    need_bytes = entries * ENTRY_BYTES + 64 * 2**20
    if st.f_bavail * st.f_frsize < need_bytes:
        raise UserError(
            f"--root '{root}': {st.f_bavail * st.f_frsize / 2**20:,.0f} MiB free, the tree needs about "
            f"{need_bytes / 2**20:,.0f} MiB of directory entries: choose another --root"
        )


def _write_sources(folder, size):
    """SOURCES small real JPEGs (the built-in classes' drawings)."""
    import numpy as np

    from selfsup.data.builtin import CLASSES, make_image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(SOURCES):
        path = os.path.join(folder, f"source_{k:02d}.JPEG")
        if not os.path.isfile(path):
            img = make_image(k % len(CLASSES), np.random.default_rng([7, k]), size)
            img.save(path + ".tmp", format="JPEG", quality=90)
            os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


class _Linker:
    """os.link from the sources in turn; a source that reaches the
    filesystem's link limit (EMLINK) is copied and the copy linked instead."""

    def __init__(self, sources):
        self.sources, self.k = list(sources), 0

    def link(self, dst):
        i = self.k % len(self.sources)
        self.k += 1
        try:
            os.link(self.sources[i], dst)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                return
            if exc.errno != errno.EMLINK:
                raise UserError(
                    f"cannot make hard link '{dst}': {exc.strerror} (--root must allow hard links)"
                ) from None
            fresh = f"{self.sources[i]}.{self.k}"
            shutil.copyfile(self.sources[i], fresh)
            self.sources[i] = fresh
            os.link(fresh, dst)


def build_tree(args):
    """<root>/<shape>/{train,val}/<class>/<file>: made once, reused when its
    'complete' stamp is there."""
    tree = tree_path(args)
    stamp = os.path.join(tree, ".complete")
    if os.path.isfile(stamp):
        return tree
    _check_root(args.root)
    entries = args.classes * (args.files_per_class + args.val_per_class)
    _check_space(args.root, entries, 2 * args.classes + 4)
    os.makedirs(args.root, exist_ok=True)
    open(os.path.join(args.root, MARKER), "a").close()
    print(f"=> building {tree}: {args.classes:,} classes x {args.files_per_class:,} (+{args.val_per_class}) files")
    start = time.perf_counter()
    linker = _Linker(_write_sources(os.path.join(tree, "sources"), args.jpeg_size))
    for split, per_class, name in (
        ("train", args.files_per_class, lambda c, j: _train_name(c, j)),
        ("val", args.val_per_class, lambda c, j: _val_name(c, j, args.val_per_class)),
    ):
        for c in range(args.classes):
            folder = os.path.join(tree, split, _class_name(c))
            os.makedirs(folder, exist_ok=True)
            for j in range(per_class):
                linker.link(os.path.join(folder, name(c, j)))
    with open(stamp, "w") as f:
        f.write(f"{args.classes} {args.files_per_class} {args.val_per_class}\n")
    print(f"=> built in {time.perf_counter() - start:.0f} s", flush=True)
    return tree


def warm_listing(tree):
    """List every folder once, untimed, so that both paths meet the same
    warm directory cache (a cold first listing is the disk's cost, not ours)."""
    for _ in os.walk(tree):
        pass


# -- memory ------------------------------------------------------------------------
def memory(pid):
    """MiB of `pid` from /proc/PID/smaps_rollup: USS (pages only it maps:
    Private_Clean + Private_Dirty), PSS (shared pages divided among their
    sharers) and RSS."""
    kib = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                kib[key] = int(value.split()[0])
    uss = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return {"uss": uss / 1024, "pss": kib.get("Pss", 0) / 1024, "rss": kib.get("Rss", 0) / 1024}


def worker_pids(loader):
    """PIDs of a ResumableLoader's (persistent) DataLoader workers."""
    iterator = getattr(loader.loader, "_iterator", None)
    return [w.pid for w in getattr(iterator, "_workers", [])]


# -- the measured process ----------------------------------------------------------
def legacy_scan(root, what="data folder"):
    """The scan as it was before numpy storage (selfsup/data/scan.py at
    830be5d), by the same rules: (classes, class_to_idx, samples as a list
    of (path, class) tuples), built by every process (no cache)."""
    from selfsup.data import scan as S

    root = os.path.expanduser(os.fspath(root))
    S._check_root(root, what)
    classes = S._class_names(root, what)
    guard = S._Guard(root, {name: S._class_target(root, name) for name in classes})
    samples = []
    for index, name in enumerate(classes):
        found, stack = [], [os.path.join(root, name)]
        while stack:
            top = stack.pop()
            images = []
            for entry in S._entries(top):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_symlink():
                    if S._followed_link(entry, guard):
                        images.append(entry.name)
                elif S.is_image_name(entry.name):
                    if not entry.is_file(follow_symlinks=False):
                        S._refuse_special(entry.path, entry.stat(follow_symlinks=False).st_mode)
                    images.append(entry.name)
            found.append((top, images))
        found.sort(key=lambda item: item[0])
        for top, images in found:
            samples.extend((os.path.join(top, n), index) for n in sorted(images))
    return classes, {name: i for i, name in enumerate(classes)}, samples


def legacy_image_folder(root, transform, what="data folder", scan=None):
    """D.image_folder before numpy storage: torchvision's ImageFolder over
    legacy_scan's lists (its samples a list of tuples, its targets a list)."""
    from torchvision import datasets

    from selfsup.data import folders as D

    classes, class_to_idx, samples = legacy_scan(root, what)

    class ListImageFolder(datasets.ImageFolder):
        def find_classes(self, directory):
            return classes, class_to_idx

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return samples

    return ListImageFolder(os.path.expanduser(root), transform=transform, loader=D.pil_loader)


class TouchSamples:
    """A dataset whose batch is the sum of len(path) + class over its
    indices: one pass over the index list reads every stored sample once,
    as an epoch's __getitem__ calls do, without decoding images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset.samples)

    def __getitems__(self, indices):  # torch's batched fetch: one call per batch
        samples, total = self.dataset.samples, 0
        for i in indices:
            path, target = samples[i]
            total += len(path) + target
        return total


def _identity(batch):
    return batch


def one_pass(dataset, workers, batch):
    """Worker memory (MiB) after their first batches and after one pass over
    a shuffled index list, with `workers` persistent workers."""
    import numpy as np
    import torch

    order = np.random.default_rng(0).permutation(len(dataset.samples))
    batches = [order[a : a + batch].tolist() for a in range(0, len(order), batch)]
    loader = torch.utils.data.DataLoader(
        TouchSamples(dataset),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_identity,
        persistent_workers=True,
    )
    del order
    it = iter(loader)
    for _ in range(min(workers, len(batches))):  # each worker has answered once
        next(it)
    pids = [w.pid for w in it._workers]
    start = [memory(pid) for pid in pids]
    for _ in it:
        pass
    end = [memory(pid) for pid in pids]  # persistent: alive and idle after the pass
    it._shutdown_workers()
    return start, end


def _namespace(args, tree):
    import types

    from selfsup.data import augment

    return types.SimpleNamespace(
        data=tree,
        gpu_aug=False,
        aug_plus=True,
        image_size=args.image_size,
        crop_min=augment.CROP_MIN,
        batch_size=args.batch_size,
        workers=args.workers,
        distributed=False,
        seed=0,
        label=None,
    )


def build_loader(kind, ns):
    """(loader, dataset): the pretraining scripts' pretrain_loader, or the
    linear evaluation's datasets and train_val_loaders (its train loader)."""
    from selfsup.engine import lincls, loaders, pretrain

    if kind == "pretrain":
        loader = pretrain.pretrain_loader(ns)
        return loader, loader.dataset
    train, val = lincls.imagefolder_datasets(ns)
    return loaders.train_val_loaders(train, val, ns)[0], train


def measured(args):
    """One row, in this fresh process: `args.child` is 'KIND STORAGE'."""
    t0 = float(os.environ["DATA_SCALE_T0"])  # the parent's clock just before it started this process
    load = os.getloadavg()
    kind, storage = args.child.split()
    from selfsup.data import folders as D
    from selfsup.data import scan as S
    from selfsup.engine import lincls, pretrain  # noqa: F401  (imported as the scripts import them)

    walks = []
    real_scan = S._scan
    S._scan = lambda root, what: walks.append(root) or real_scan(root, what)  # counts listings of the tree
    if storage == "before":
        real_legacy = legacy_image_folder
        D.image_folder = lambda root, *a, **k: walks.append(root) or real_legacy(root, *a, **k)
    t_imports = time.time()
    loader, dataset = build_loader(kind, _namespace(args, args.tree))
    t_built = time.time()
    it = iter(loader)
    next(it)
    t_first = time.time()
    start = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    rate = args.batches * args.batch_size / (time.perf_counter() - start)
    loader.shutdown_workers()  # the cores go to the pass below
    main = memory(os.getpid())
    w_start, w_end = one_pass(dataset, args.workers, args.touch_batch)
    row = {
        "kind": kind,
        "storage": storage,
        "samples": len(dataset),
        "samples_type": type(dataset.samples).__name__,
        "walks": len(walks),
        "first_batch_s": t_first - t0,
        "imports_s": t_imports - t0,
        "dataset_s": t_built - t_imports,
        "loader_s": t_first - t_built,
        "rate": rate,
        "main": main,
        "main_after_pass": memory(os.getpid()),
        "workers_start": w_start,
        "workers_end": w_end,
        "load": [load, os.getloadavg()],
    }
    print("RESULT " + json.dumps(row), flush=True)


# -- the run -----------------------------------------------------------------------
VARIANTS = (  # (storage, label, cache state)
    ("before", "list of tuples (before)", "off"),
    ("after", "numpy arrays, first rank of a node (after)", "fresh"),
    ("after", "numpy arrays, other ranks / reruns (after)", "reuse"),
)


def variants(args):
    """The rows to measure: the cache's row only where the cache is used
    (trees of scan_cache.MIN_SAMPLES images or more)."""
    from selfsup.data import scan_cache

    big = args.classes * args.files_per_class >= scan_cache.MIN_SAMPLES
    return [v for v in VARIANTS if big or v[2] != "reuse"]


def run_child(args, kind, storage, cache):
    env = dict(os.environ, SELFSUP_SCAN_CACHE=cache, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{kind} {storage}", "--tree", args.tree]
    cmd += ["--workers", str(args.workers), "-b", str(args.batch_size), "--image-size", str(args.image_size)]
    cmd += ["--batches", str(args.batches), "--touch-batch", str(args.touch_batch)]
    env["DATA_SCALE_T0"] = repr(time.time())
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise UserError(f"the {kind} {storage} measurement failed (exit {done.returncode}): {tail}")


def _mib(v):
    return f"{v:,.0f}"


def _workers(row):
    return ", ".join(f"{_mib(a['uss'])} → {_mib(b['uss'])}" for a, b in zip(row["workers_start"], row["workers_end"]))


def table(rows, args):
    n = rows[0]["samples"] if rows else 0
    lines = [
        f"{n:,} training images ({args.classes:,} classes x {args.files_per_class:,}), {args.workers} workers, "
        f"batch {args.batch_size}, {args.image_size} px; {os.cpu_count()} CPU cores",
        "",
        "| loader | samples stored as | start → first batch (s) | of which imports / dataset / loader (s) "
        "| tree listed | main USS / PSS (MiB) | each worker's USS, start → after one pass (MiB) "
        "| worker PSS after (MiB) | samples/s | load avg (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pss = ", ".join(_mib(w["pss"]) for w in r["workers_end"])
        lines.append(
            f"| {r['kind']} | {r['label']} | {r['first_batch_s']:.1f} | {r['imports_s']:.1f} / "
            f"{r['dataset_s']:.1f} / {r['loader_s']:.1f} | {r['walks']}x | {_mib(r['main']['uss'])} / "
            f"{_mib(r['main']['pss'])} | {_workers(r)} | {pss} | {r['rate']:,.0f} | "
            f"{r['load'][0][0]:.1f} → {r['load'][1][0]:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), f"selfsup-data-scale-{os.getuid()}"))
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--files-per-class", type=int, default=1281)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("-j", "--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("-b", "--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64, help="crop size (small: the index is measured, not decode)")
    p.add_argument("--batches", type=int, default=20, help="timed batches after the first, for samples/s")
    p.add_argument("--touch-batch", type=int, default=4096, help="indices per batch of the one pass")
    p.add_argument("--jpeg-size", type=int, default=96, help="side of the source JPEGs")
    p.add_argument("--loaders", default="pretrain,lincls", help="pretrain, lincls or both")
    p.add_argument("--repeat", type=int, default=1, help="measure every row this many times")
    p.add_argument("--quick", action="store_true", help="100 classes x 50 files, 3 timed batches of 16: seconds")
    p.add_argument("--out", default="", help="also write the table(s) (markdown) to this file")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--tree", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.classes, args.files_per_class, args.val_per_class = 100, 50, 10
        args.batch_size, args.batches, args.touch_batch = 16, 3, 512
    for flag in ("classes", "files_per_class", "val_per_class", "batch_size", "image_size", "repeat", "touch_batch"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive number")
    if args.workers < 1 or args.batches < 0:
        raise UserError("-j/--workers must be at least 1 (workers are what is measured), --batches not negative")
    if args.batch_size > args.files_per_class * args.classes:
        raise UserError(f"-b {args.batch_size}: larger than the tree's {args.files_per_class * args.classes} images")
    args.loaders = [k for k in args.loaders.split(",") if k]
    for k in args.loaders:
        if k not in ("pretrain", "lincls"):
            raise UserError(f"--loaders: unknown '{k}' (expected pretrain, lincls)")
    if not os.path.isfile("/proc/self/smaps_rollup"):
        raise UserError("this benchmark reads /proc/PID/smaps_rollup (Linux 4.14 or later)")
    return args


@cli_main
def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return measured(args)
    args.root = os.path.abspath(args.root)
    args.tree = build_tree(args)
    warm_listing(args.tree)
    texts = []
    for rep in range(args.repeat):
        rows = []
        for kind in args.loaders:
            cache = tempfile.mkdtemp(prefix="selfsup-data-scale-cache-")  # this measurement's node cache
            try:
                for storage, label, state in variants(args):
                    row = run_child(args, kind, storage, "off" if state == "off" else cache)
                    row["label"] = label
                    rows.append(row)
                    print(f"   {kind}, {label}: first batch {row['first_batch_s']:.1f} s, workers {_workers(row)} MiB")
            finally:
                shutil.rmtree(cache, ignore_errors=True)  # its own temporary folder
        when = time.strftime("%Y-%m-%d %H:%M")
        texts.append(f"Run {rep + 1} of {args.repeat}, {when}: " + table(rows, args))
        print("\n" + texts[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(texts) + "\n")


if __name__ == "__main__":
    main()
