"""CIFAR-10/100 from the standard python archives: torchvision's CIFAR10 and
CIFAR100 with download=False, and one-line errors around them.

Layout (as distributed by the CIFAR authors and read by torchvision):
``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``. A ``.tar.gz`` of either
folder next to it is unpacked first. Nothing is downloaded.

Safety: each of those files is a pickle, and torchvision reads it with plain
pickle.load, which runs whatever code a planted file holds. It is safe here
because torchvision (0.29, torchvision/datasets/cifar.py) compares every
file's md5 with the official archive's before unpickling any: __init__ calls
_check_integrity() over train_list + test_list before its pickle.load loop,
and _load_meta() checks the meta file's md5 before loading it. A file that
is not byte-for-byte the authors' one is therefore refused unread (making a
different file with a given md5 is a preimage attack, out of reach; the
known md5 collisions need both files chosen by the attacker).
`tests/test_safe_load.py` pins that order. With --unsafe-load the user
vouches for the files instead: the md5 lists are dropped and any file in
the layout is read (own re-packed or subset archives, the tests' fakes).
"""

import os
import shutil
import tarfile
import tempfile
import zlib
from typing import Callable, Optional

from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from selfsup.core.checkpoint import unsafe_load_enabled
from selfsup.core.errors import UserError


def _without_md5(entries: list) -> list:
    return [[file_name, None] for file_name, _ in entries]


# --unsafe-load: torchvision's classes with md5 None, for which its
# check_integrity only checks that each file exists. Module-level classes, so
# that a DataLoader worker started by spawn or forkserver can unpickle them.
class _TrustedCIFAR10(CIFAR10):
    train_list, test_list = _without_md5(CIFAR10.train_list), _without_md5(CIFAR10.test_list)
    meta = dict(CIFAR10.meta, md5=None)


class _TrustedCIFAR100(CIFAR100):
    train_list, test_list = _without_md5(CIFAR100.train_list), _without_md5(CIFAR100.test_list)
    meta = dict(CIFAR100.meta, md5=None)


DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
TRUSTED = {"cifar10": _TrustedCIFAR10, "cifar100": _TrustedCIFAR100}
TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _files(dataset: type) -> list:
    """[file name, official md5] of every file the dataset class reads."""
    return [*dataset.train_list, *dataset.test_list, [dataset.meta["filename"], dataset.meta["md5"]]]


def _not_official(folder: str, name: str, exc: Exception) -> UserError:
    """The one line for files that failed torchvision's md5 check, naming them."""
    dataset = DATASETS[name]
    wrong = [
        os.path.join(folder, file_name)
        for file_name, md5 in _files(dataset)
        if not check_integrity(os.path.join(folder, file_name), md5)
    ]
    if not wrong:  # not the md5 check after all
        return UserError(f"CIFAR files in '{folder}': {exc}")
    listed = ", ".join(f"'{path}'" for path in wrong)
    if len(wrong) == 1:
        what, it = f"file {listed} is not the official {TITLES[name]} file", "it"
    else:
        what, it = f"files {listed} are not the official {TITLES[name]} files", "them"
    return UserError(
        f"CIFAR {what} (md5 differs: corrupt, or not from the authors' archive; unpickling {it} "
        f"could run code): download {it} again; if you trust {it}, rerun with --unsafe-load "
        "(see docs/safety.md)"
    )


def cifar_folder(root: str, name: str) -> str:
    """`<root>/<the dataset's folder>`, unpacking its .tar.gz first when only
    the archive is there; a UserError when neither is."""
    if name not in DATASETS:
        raise UserError(f"--dataset {name}: expected one of {', '.join(DATASETS)}")
    folder, archive = DATASETS[name].base_folder, DATASETS[name].filename
    path = os.path.join(root, folder)
    if not os.path.isdir(path) and os.path.isfile(os.path.join(root, archive)):
        _unpack(os.path.join(root, archive), root, folder)
    if not os.path.isdir(path):
        raise UserError(
            f"no {name} under '{root}': expected the folder '{path}' or the archive "
            f"'{os.path.join(root, archive)}' (CIFAR python version; nothing is downloaded)"
        )
    return path


def _unpack(archive: str, root: str, folder: str) -> None:
    """Unpack into a scratch folder and move `folder` into place only when the
    whole archive read well: a truncated or corrupt download is one line, and
    leaves no half-unpacked folder that a rerun would take for the data.
    (torchvision's extract_archive neither filters members nor unpacks aside.)"""
    try:
        scratch = tempfile.mkdtemp(prefix=".unpack", dir=root)
    except OSError as exc:
        raise UserError(f"cannot unpack '{archive}': '{root}' is not writable ({exc.strerror})") from None
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        unpacked = os.path.join(scratch, folder)
        if not os.path.isdir(unpacked):
            raise UserError(f"archive '{archive}' holds no '{folder}/' folder: not the CIFAR python version")
        os.rename(unpacked, os.path.join(root, folder))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(
            f"archive '{archive}' is corrupt or truncated ({exc or type(exc).__name__}): download it again"
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def CIFAR(root: str, name: str = "cifar10", train: bool = True, transform: Optional[Callable] = None) -> CIFAR10:
    """The train or test split of CIFAR-10/100 under `root`, as torchvision's
    dataset (PIL images, `targets`, `classes`); every failure is one line."""
    folder = cifar_folder(root, name)
    official = DATASETS[name]
    for file_name, _ in _files(official):
        if not os.path.isfile(os.path.join(folder, file_name)):
            raise UserError(f"CIFAR file '{os.path.join(folder, file_name)}' is missing")
    dataset = TRUSTED[name] if unsafe_load_enabled() else official
    try:
        return dataset(root, train=train, transform=transform, download=False)
    except RuntimeError as exc:
        if dataset is official:  # torchvision's "Dataset not found or corrupted": an md5 differs
            raise _not_official(folder, name, exc) from None
        raise UserError(f"CIFAR files in '{folder}': {exc}") from None
    except Exception as exc:  # only files trusted by --unsafe-load get here: unpickled, but not CIFAR's
        raise UserError(
            f"CIFAR files in '{folder}' are not CIFAR python pickles ({type(exc).__name__}: {exc})"
        ) from None
