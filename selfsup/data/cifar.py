"""CIFAR-10/100 from the standard python archives, read without download.

Layout (as distributed by the CIFAR authors and expected by torchvision):
``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``; each file a pickled dict with
``data`` (N x 3072 uint8, channel-major 32x32) and ``labels`` or
``fine_labels``. A ``.tar.gz`` of either folder next to it is unpacked first.
"""
import os
import pickle
import tarfile

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from selfsup.core.checkpoint import UNSAFE_HINT, unsafe_load_enabled
from selfsup.core.errors import UserError

LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta",
                 "fine_label_names", "fine_labels"),
}


# The only globals a CIFAR python archive refers to: numpy arrays (the
# authors' Python 2 files: numpy.core.multiarray._reconstruct, ndarray,
# dtype; numpy 2 writes numpy._core, protocol 5 writes _frombuffer), numpy
# scalars (labels re-pickled from numpy ints) and _codecs.encode (bytes in a
# protocol-2 pickle written by Python 3). Dicts, lists, bytes, str and ints
# need no global. Each of these only builds a value; none runs code.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", f) for core in ("core", "_core") for f in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _Refused(Exception):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only _CIFAR_GLOBALS, so a planted file
    cannot make the load import and call anything else (os.system, ...)."""

    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path):
    try:
        with open(path, "rb") as f:
            if unsafe_load_enabled():  # --unsafe-load: the user trusts the file
                return pickle.load(f, encoding="bytes")
            return _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"CIFAR file '{path}' is missing") from None
    except _Refused as exc:
        raise UserError(f"CIFAR file '{path}' needs {exc}, which a CIFAR archive never holds (only dicts, lists, "
                        f"bytes, ints and numpy arrays; loading it could run code); {UNSAFE_HINT}") from None
    except Exception as exc:
        raise UserError(f"CIFAR file '{path}' is not a CIFAR python pickle ({exc})") from None


def _get(d, key):
    return d[key.encode()] if key.encode() in d else d[key]


def cifar_folder(root, name):
    if name not in LAYOUTS:
        raise UserError(f"--dataset {name}: expected one of {', '.join(LAYOUTS)}")
    folder, archive = LAYOUTS[name][:2]
    path = os.path.join(root, folder)
    if not os.path.isdir(path) and os.path.isfile(os.path.join(root, archive)):
        _unpack(os.path.join(root, archive), root, folder)
    if not os.path.isdir(path):
        raise UserError(f"no {name} under '{root}': expected the folder '{path}' or the archive "
                        f"'{os.path.join(root, archive)}' (CIFAR python version; nothing is downloaded)")
    return path


def _unpack(archive, root, folder):
    """Unpack into a scratch folder and move `folder` into place only when the
    whole archive read well: a truncated or corrupt download is one line, and
    leaves no half-unpacked folder that a rerun would take for the data."""
    import shutil
    import tempfile
    import zlib
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
        raise UserError(f"archive '{archive}' is corrupt or truncated ({exc or type(exc).__name__}): download "
                        "it again") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class CIFAR(Dataset):
    def __init__(self, root, name="cifar10", train=True, transform=None):
        folder = cifar_folder(root, name)
        _, _, train_files, test_files, meta_file, names_key, labels_key = LAYOUTS[name]
        data, labels = [], []
        for f in train_files if train else test_files:
            d = _unpickle(os.path.join(folder, f))
            data.append(np.asarray(_get(d, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(_get(d, labels_key))
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # N x 32 x 32 x 3
        self.targets = labels
        meta = _unpickle(os.path.join(folder, meta_file))
        self.classes = [n.decode() if isinstance(n, bytes) else n for n in _get(meta, names_key)]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]
