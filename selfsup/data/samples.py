"""An ImageFolder's (path, class) list in numpy arrays, and list-like views
of it.

torchvision keeps `samples` as a Python list of (path, class) tuples: at
ImageNet's 1.28 M images that is 1.28 M tuples, strings and list slots
spread over some 200 MB of the heap. A DataLoader worker forked from the
main process shares those pages until it writes to them, and it writes to
one whenever it reads a sample, because taking a reference to a Python
object increments its count in place: after one epoch every worker holds
its own copy of the whole list. Here the paths are one packed byte array
(file-system encoded, relative to a common prefix, usually the data folder)
with an array of offsets, and the classes an int64 array: three objects,
whose data pages a worker only reads, so the pages stay shared however many
images it loads.

`SampleList` and `TargetList` read like the lists they replace: len,
indexing (a sample is a `(str, int)` tuple, a target an `int`), slices,
iteration, ``==`` against a list, ``*`` and ``+`` (which give lists), and
`np.asarray(targets)` without a copy.
"""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

_CHUNK = 1 << 16  # samples decoded per step when iterating
# os.fsencode/os.fsdecode are these two, called per name
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _encode_all(paths):
    """[os.fsencode(p) for p in paths], in one encode call: paths hold no NUL,
    and the encoding works character by character."""
    if not paths:
        return []
    return "\0".join(paths).encode(_FS_ENCODING, _FS_ERRORS).split(b"\0")


class SampleTable:
    """`prefix` + the i-th path and its class: `blob[offsets[i]:offsets[i + 1]]`
    (os.fsencode'd, so any file name survives the round trip) and
    `targets[i]`."""

    __slots__ = ("prefix", "blob", "offsets", "targets")

    def __init__(self, prefix: str, blob: np.ndarray, offsets: np.ndarray, targets: np.ndarray) -> None:
        if len(offsets) != len(targets) + 1:
            raise ValueError(f"{len(offsets)} offsets for {len(targets)} targets (expected one more)")
        self.prefix = prefix
        self.blob = _frozen(np.asarray(blob, dtype=np.uint8))
        self.offsets = _frozen(np.asarray(offsets, dtype=np.int64))
        self.targets = _frozen(np.asarray(targets, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, i: int) -> str:
        start, end = self.offsets[i : i + 2]
        return self.prefix + self.blob[start:end].tobytes().decode(_FS_ENCODING, _FS_ERRORS)

    def pair(self, i: int) -> tuple[str, int]:
        return self.path(i), int(self.targets[i])

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[str, int]]:
        """(path, class) of samples start..stop, decoded a chunk at a time."""
        stop = len(self) if stop is None else stop
        prefix, enc, err = self.prefix, _FS_ENCODING, _FS_ERRORS
        for a in range(start, stop, _CHUNK):
            b = min(a + _CHUNK, stop)
            offs = self.offsets[a : b + 1].tolist()
            raw, base = self.blob[offs[0] : offs[-1]].tobytes(), offs[0]
            for k, target in enumerate(self.targets[a:b].tolist()):
                yield prefix + raw[offs[k] - base : offs[k + 1] - base].decode(enc, err), target

    @classmethod
    def build(cls, prefix: str, chunks: Iterable[tuple[Sequence[str], int]]) -> SampleTable:
        """From (relative paths, class) chunks, e.g. one per class folder;
        each chunk is packed as it comes, so no list of all the paths is
        ever held."""
        parts, lengths, targets = [], [], []
        for rel_paths, target in chunks:
            encoded = _encode_all(rel_paths)
            parts.append(b"".join(encoded))
            lengths.append(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
            targets.append(np.full(len(encoded), target, dtype=np.int64))
        offsets = np.zeros(sum(map(len, lengths)) + 1, dtype=np.int64)
        if lengths:
            np.cumsum(np.concatenate(lengths), out=offsets[1:])
        blob = np.frombuffer(b"".join(parts), dtype=np.uint8)
        return cls(prefix, blob, offsets, np.concatenate(targets) if targets else np.zeros(0, np.int64))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, int]], prefix: str = "") -> SampleTable:
        """From (path, class) pairs; paths that all start with `prefix` are
        stored without it, otherwise whole."""
        pairs = [(os.fspath(p), int(t)) for p, t in pairs]
        if not all(p.startswith(prefix) for p, _ in pairs):
            prefix = ""
        cut = len(prefix)
        targets = np.fromiter((t for _, t in pairs), dtype=np.int64, count=len(pairs))
        return cls._pack(prefix, [os.fsencode(p[cut:]) for p, _ in pairs], targets)

    @classmethod
    def _pack(cls, prefix, encoded, targets):
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(prefix, np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets, targets)

    def __getstate__(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state):
        self.__init__(**state)


def _frozen(array):
    """Read-only: nothing may write to pages that forked workers share."""
    if array.flags.writeable:
        array.setflags(write=False)
    return array


def _index(i, n):
    i = operator.index(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError("sample index out of range")
    return i


class SampleList(Sequence):
    """The (path, class) list of a SampleTable, read like torchvision's
    `samples` list."""

    __slots__ = ("table",)

    def __init__(self, table: SampleTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.table.pair(k) for k in range(*i.indices(len(self)))]
        return self.table.pair(_index(i, len(self)))

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return self.table.pairs()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (list, SampleList)):
            return NotImplemented
        if isinstance(other, SampleList) and other.table is self.table:
            return True
        return len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # mutable lists are unhashable; so is this

    def __add__(self, other: Any) -> list:
        return list(self) + list(other)

    def __radd__(self, other: Any) -> list:
        return list(other) + list(self)

    def __mul__(self, n: int) -> list:
        return list(self) * n

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"SampleList({len(self)} samples, prefix {self.table.prefix!r})"


class TargetList(Sequence):
    """An int64 array read like torchvision's `targets` list; np.asarray of
    it is the array itself."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = _frozen(np.asarray(array, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.array[i].tolist()
        return int(self.array[_index(i, len(self))])

    def __iter__(self) -> Iterator[int]:
        for a in range(0, len(self), _CHUNK):
            yield from self.array[a : a + _CHUNK].tolist()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is None or np.dtype(dtype) == self.array.dtype:
            return self.array.copy() if copy else self.array
        return self.array.astype(dtype)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TargetList):
            return bool(np.array_equal(self.array, other.array))
        if not isinstance(other, list):
            return NotImplemented
        return len(other) == len(self) and self.array.tolist() == other

    __hash__ = None

    def __add__(self, other: Any) -> list:
        return list(self) + list(other)

    def __radd__(self, other: Any) -> list:
        return list(other) + list(self)

    def __mul__(self, n: int) -> list:
        return list(self) * n

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"TargetList({len(self)} targets)"


def as_sample_list(value: Any, prefix: str = "") -> SampleList:
    """`value` (a SampleList, or any sequence of (path, class) pairs) as a
    SampleList; pairs are packed into a new table."""
    if isinstance(value, SampleList):
        return value
    return SampleList(SampleTable.from_pairs(value, prefix))


def as_target_list(value: Any) -> TargetList | list:
    """`value` as a TargetList when it is a sequence of integers; anything
    else (a caller's own labels) is kept as a list, as torchvision would."""
    if isinstance(value, TargetList):
        return value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        return list(value)
    if array.ndim == 1 and (array.dtype.kind in "iu" or len(array) == 0):
        return TargetList(array)
    return list(value)
