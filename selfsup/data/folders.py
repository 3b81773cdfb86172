"""ImageFolder datasets with checks that turn bad input into one-line errors."""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import random
import signal
from typing import Callable, Mapping

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from selfsup.core import distributed as du
from selfsup.core.checks import SKIP_BAD_IMAGES_ENV
from selfsup.core.errors import UserError
from selfsup.core.processes import ignore_stop_signals
from selfsup.data.scan import FolderScan, ScannedImageFolder, open_regular_file, scan_image_folder


def pil_loader(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file is a UserError naming it.
    Decoding is PIL's business: whatever it raises (truncated data, a bad
    chunk, a decompression bomb) is the file's fault, so all of it is caught.
    A FIFO or device (put there after the scan) is refused, not waited on."""
    try:
        with open_regular_file(path) as f:
            img = Image.open(f)
            return img.convert("RGB")
    except UserError as err:  # a FIFO or device: --skip-bad-images skips it like an unreadable image
        err.bad_image = path
        raise
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        EOFError,
        IndexError,
        TypeError,
        Image.DecompressionBombError,
    ) as exc:
        # A plain UserError (its message survives a DataLoader worker's
        # re-raise as one line); `bad_image` tells SkippingImageFolder.
        err = UserError(
            f"unreadable image '{path}': {exc or type(exc).__name__} (fix or remove the file, "
            "or rerun with --skip-bad-images)"
        )
        err.bad_image = path
        raise err from None


def skip_bad_images_enabled() -> bool:
    return os.environ.get(SKIP_BAD_IMAGES_ENV) == "1"


class SkippingImageFolder(ScannedImageFolder):
    """ImageFolder for --skip-bad-images: an unreadable image is reported by
    path once and replaced by the next readable one, so batches keep their
    size; the count lives in shared memory because loader workers meet the
    files, and report_skipped() prints it in the main process."""

    def __init__(self, root: str, transform: Callable | None, scan: FolderScan | None = None):
        super().__init__(root, transform=transform, loader=pil_loader, scan=scan)
        self.skipped = multiprocessing.Value("i", 0)
        self._known_bad = set()

    def __getitem__(self, index):
        for k in range(len(self.samples)):
            try:
                return super().__getitem__((index + k) % len(self.samples))
            except UserError as exc:
                if not getattr(exc, "bad_image", None):
                    raise
                with self.skipped.get_lock():
                    self.skipped.value += 1
                if exc.bad_image not in self._known_bad:
                    self._known_bad.add(exc.bad_image)
                    print(f"=> skipping {exc}".split(" (fix or remove")[0], flush=True)
        raise UserError(f"no readable image in '{self.root}' (--skip-bad-images skipped all of them)")


def report_skipped(dataset: torch.utils.data.Dataset, epoch: int) -> int:
    """After an epoch: how many unreadable images --skip-bad-images replaced
    (nothing is printed when the flag is off or none was met)."""
    counter = getattr(dataset, "skipped", None)
    if counter is None:
        return 0
    with counter.get_lock():
        n, counter.value = counter.value, 0
    if n:
        print(f"=> epoch {epoch}: skipped {n} unreadable image{'s' if n != 1 else ''} (--skip-bad-images)", flush=True)
    return n


def check_image_folder(root: str, what: str = "data folder") -> FolderScan:
    """The scan of `root` (selfsup.data.scan): UserError unless it is a
    folder of class folders holding images, by the scan's rules on links and
    special files. Pass the result on (image_folder's `scan`) rather than
    reading the tree again."""
    return scan_image_folder(root, what)


def image_folder(
    root: str, transform: Callable | None, what: str = "data folder", scan: FolderScan | None = None
) -> datasets.ImageFolder:
    """The ImageFolder of `root`, from one scan (made here unless given)."""
    scan = scan if scan is not None else check_image_folder(root, what)
    if skip_bad_images_enabled():
        return SkippingImageFolder(root, transform, scan=scan)
    return ScannedImageFolder(root, transform=transform, loader=pil_loader, scan=scan)


def split_folder(data: str, split: str) -> str:
    """`data`/`split` for the positional data argument (train/ or val/)."""
    if not os.path.isdir(data):
        raise UserError(f"data folder '{data}' does not exist (expected a folder holding train/ and val/)")
    return os.path.join(data, split)


def _draw_seed():
    """A 63-bit seed from the global torch generator (seeded per epoch under --seed)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def _sample_seed(aug_seed, position):
    """Seed of the sample at `position` of an epoch (a SplitMix64 step)."""
    z = (aug_seed + 0x9E3779B97F4A7C15 * (position + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


class ResumableBatchSampler:
    """Batches of an epoch's permutation, each index paired with the seed of
    its augmentation; it can start at batch i without producing (or
    loading) the first i.

    One process: the permutation seed is drawn from the global torch
    generator as RandomSampler does; several: `seed` + epoch, as
    DistributedSampler (same permutation on every rank, padded, strided by
    rank). Augmentation seeds come from a per-rank seed drawn at the start
    of each epoch, so a sample's crops depend only on (epoch seeds,
    position), not on which worker loads it or where a run was resumed."""

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, drop_last: bool, distributed: bool, seed: int | None = None
    ):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.distributed, self.seed = distributed, seed or 0
        self.world = du.world_size() if distributed else 1
        self.rank = du.rank() if distributed else 0
        self.epoch, self._resume, self.state = 0, None, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, state: Mapping[str, int]) -> None:
        """Continue the epoch described by `state` (from position()) at its batch."""
        self._resume = dict(state)

    def position(self, batches_done: int) -> dict[str, int]:
        """What a mid-epoch checkpoint stores to continue after `batches_done` batches."""
        return {**self.state, "start": int(batches_done)}

    def _local_count(self):
        return math.ceil(self.n / self.world) if self.distributed else self.n

    def __len__(self):
        n = self._local_count()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _indices(self, perm_seed):
        g = torch.Generator()
        g.manual_seed(perm_seed)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        if not self.distributed:
            return order
        total = self._local_count() * self.world
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]
        return order[self.rank : total : self.world]

    def __iter__(self):
        if self._resume is not None:
            state, self._resume = self._resume, None
        else:
            perm = self.seed + self.epoch if self.distributed else (_draw_seed() if self.shuffle else 0)
            state = {"epoch": self.epoch, "perm_seed": perm, "aug_seed": _draw_seed(), "start": 0}
        self.state = state
        order, bs = self._indices(state["perm_seed"]), self.batch_size
        for b in range(state["start"], len(self)):
            yield [
                (idx, _sample_seed(state["aug_seed"], b * bs + k)) for k, idx in enumerate(order[b * bs : (b + 1) * bs])
            ]


class SeededDataset(torch.utils.data.Dataset):
    """dataset[(index, seed)] = dataset[index] with python, numpy and torch
    seeded by `seed`: augmentations are reproducible wherever they run. In
    the main process (-j 0) the run's own RNG streams are left untouched."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):  # classes, root, samples, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        index, seed = key
        if torch.utils.data.get_worker_info() is not None:
            _seed_all(seed)
            return self.dataset[index]
        py, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            _seed_all(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py)
                np.random.set_state(np_state)


def _seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def _worker_init(_):
    ignore_stop_signals()


@atexit.register
def _kill_workers_at_exit():
    """Loader workers ignore SIGTERM (above), and at exit Python's
    multiprocessing sends its daemonic children SIGTERM and waits for them:
    a run that stopped on an error would wait forever. Registered after
    multiprocessing's own handler, this one runs first and ends them."""
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise for each killed worker
        for child in children:
            child.kill()


class ResumableLoader:
    """A DataLoader over a ResumableBatchSampler that calls `hook(epoch, i)`
    at each iteration boundary (i batches done, 0 < i < len): where the
    training loops save mid-epoch checkpoints and notice stop signals,
    without a line in the loops themselves."""

    def __init__(self, loader: torch.utils.data.DataLoader, batch_sampler: ResumableBatchSampler):
        self.loader, self.batch_sampler, self.hook = loader, batch_sampler, None

    def __len__(self):
        return len(self.batch_sampler)

    @property
    def batch_size(self) -> int:
        return self.batch_sampler.batch_size

    @property
    def sampler(self) -> ResumableBatchSampler:  # loader.sampler.set_epoch(epoch), as with a DistributedSampler
        return self.batch_sampler

    @property
    def dataset(self) -> torch.utils.data.Dataset:
        return self.loader.dataset.dataset

    @property
    def start(self) -> int:
        """Index of the first batch the next pass yields (0, or a resume point)."""
        return (self.batch_sampler._resume or {}).get("start", 0)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def resume_at(self, state: Mapping[str, int]) -> None:
        self.batch_sampler.resume_at(state)

    def position(self, batches_done: int) -> dict[str, int]:
        return self.batch_sampler.position(batches_done)

    def __iter__(self):
        start = self.start
        epoch, total = self.batch_sampler.epoch, len(self)
        try:
            for i, batch in enumerate(self.loader, start + 1):
                yield batch
                if self.hook is not None and i < total:
                    self.hook(epoch, i)
        except Exception:
            # A batch that failed (an unreadable image) ends the run: stop the
            # workers now, while their queues are open. Left to the garbage
            # collector (the traceback's frames hold the iterator in reference
            # cycles), the workers' shutdown races their queues' own finalizers
            # and a queue thread can print a traceback after the one-line error.
            self.shutdown_workers()
            raise

    def shutdown_workers(self) -> None:
        """End the worker processes, which persist between epochs (torch keeps
        their iterator on the DataLoader); the next pass starts new ones."""
        iterator, self.loader._iterator = getattr(self.loader, "_iterator", None), None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # multiprocess iterators only
        if shutdown is not None:
            shutdown()


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    workers: int,
    shuffle: bool,
    drop_last: bool,
    distributed: bool,
    seed: int | None = None,
    collate_fn: Callable | None = None,
) -> ResumableLoader:
    """A ResumableLoader (DataLoader with a ResumableBatchSampler); call
    loader.set_epoch(epoch) before each epoch."""
    if len(dataset) < batch_size and drop_last:
        raise UserError(
            f"batch size {batch_size} per process is larger than the {len(dataset)} images of "
            f"'{getattr(dataset, 'root', 'the dataset')}' (lower -b/--batch-size)"
        )
    batches = ResumableBatchSampler(len(dataset), batch_size, shuffle, drop_last, distributed, seed)
    generator = torch.Generator()  # worker base seeds: kept off the global generator
    generator.manual_seed(seed or 0)
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        collate_fn=collate_fn,
        generator=generator,
        worker_init_fn=_worker_init if workers > 0 else None,
    )
    return ResumableLoader(loader, batches)
