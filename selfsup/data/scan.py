"""One scan of an ImageFolder tree: torchvision's classes, class_to_idx and
samples, in torchvision's order, without following links where they make
the tree lie.

torchvision walks each class folder with os.walk(followlinks=True): a link
to `..` inside a class folder reads the whole data folder again under that
class (and loops until the path is too long), a link to another class
labels that class's images twice, and a FIFO named like an image blocks the
loader worker that opens it. This scan reads the same tree once, with
os.scandir, and refuses those cases by name. What it accepts it returns
exactly as torchvision would: the same class list (every sub-folder of the
root, links included, sorted), the same IMG_EXTENSIONS test (case-blind),
and within a class the folders in `sorted(os.walk(...))` order, each
folder's files sorted.

The rules (docs/bad-input.md, "Data folders: links, cycles and special files"):
- a class folder may be a link (ImageNet trees of linked class folders are
  common); two class names that are the same folder, a class that holds
  the data folder, or one class inside another, are refused;
- inside a class folder, links to files are followed (subsets made of links
  are normal), links to folders are not: one that leads back into the data
  folder (or above it) would repeat or mislabel images, and one that leads
  out of it is refused too, with the fix (put the folder itself there), so
  that what is trained on is what lies under the data folder;
- a dangling link or a loop of links named like an image is refused;
- a FIFO, socket or device named like an image is refused.
Regular files cost no system call beyond the folder listing (DirEntry
knows their type), so a scan of ImageNet's 1.28 M files stays fast.

The samples are kept in numpy arrays (selfsup.data.samples: DataLoader
workers then share them instead of copying them page by page as they read
them), and a big tree is scanned once per node (selfsup.data.scan_cache:
the node's other ranks, and later runs, read the first one's result while
the tree is unchanged).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

from torchvision import datasets

from selfsup.core.errors import UserError
from selfsup.data import scan_cache
from selfsup.data.samples import SampleList, SampleTable, TargetList, as_sample_list, as_target_list

IMG_EXTENSIONS = datasets.folder.IMG_EXTENSIONS


@dataclass
class FolderScan:
    """What torchvision's find_classes and make_dataset would return, the
    samples in a SampleTable (`samples` and `targets` read it like lists)."""

    root: str
    classes: list[str]
    class_to_idx: dict[str, int]
    table: SampleTable

    @property
    def samples(self) -> SampleList:
        return SampleList(self.table)

    @property
    def targets(self) -> TargetList:
        return TargetList(self.table.targets)


def is_image_name(name: str) -> bool:
    """torchvision's extension test (has_file_allowed_extension)."""
    return name.lower().endswith(IMG_EXTENSIONS)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def special_kind(mode: int) -> str | None:
    """'a FIFO (named pipe)', 'a socket', ... for a mode that is neither a
    regular file nor a folder (nor a link); None otherwise."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None


def scan_image_folder(root: str | os.PathLike, what: str = "data folder", cache: bool = True) -> FolderScan:
    """Read `root` (an ImageFolder tree) once; UserError naming the path for
    anything the rules above refuse, or for a folder without images. With
    `cache`, a big tree's valid scan of this node is read instead
    (selfsup.data.scan_cache)."""
    root = os.path.expanduser(os.fspath(root))  # as torchvision's VisionDataset
    _check_root(root, what)
    rules = rules_digest() if cache else None
    if rules is not None:
        classes, table = scan_cache.cached_scan(root, rules, lambda: _scan(root, what))
    else:
        classes, table, _ = _scan(root, what)
    return FolderScan(root, classes, {name: i for i, name in enumerate(classes)}, table)


@functools.lru_cache(maxsize=None)
def rules_digest() -> str | None:
    """Names the scan rules a cached scan was made by: this module's source
    and torchvision's image extensions (None, and no cache, when the source
    cannot be read)."""
    try:
        with open(__file__, "rb") as f:
            digest = hashlib.sha256(f.read())
    except OSError:
        return None
    digest.update(repr(IMG_EXTENSIONS).encode())
    return digest.hexdigest()


def _scan(root, what):
    """(classes, table, the folders listed) of one walk of `root`; each
    class folder's paths are packed as soon as it is read."""
    folders = [scan_cache.listed(root)]
    classes = _class_names(root, what)
    guard = _Guard(root, {name: _class_target(root, name) for name in classes})
    prefix = os.path.join(root, "")

    def per_class():
        for index, name in enumerate(classes):
            paths = _walk_class(os.path.join(root, name), guard, folders, len(prefix))
            if not paths:
                raise UserError(
                    f"class folder '{os.path.join(root, name)}' holds no images (expected files ending in "
                    f"{', '.join(IMG_EXTENSIONS[:4])}, ...)"
                )
            yield paths, index

    return classes, SampleTable.build(prefix, per_class()), folders


def _check_root(root, what):
    if os.path.isdir(root):
        return
    if os.path.exists(root):
        raise UserError(f"{what} '{root}' is not a folder (expected a folder of class sub-folders with images)")
    raise UserError(f"{what} '{root}' does not exist (expected a folder of class sub-folders with images)")


def _entries(folder):
    """The DirEntry list of `folder`; an unreadable folder is a UserError
    (os.walk would skip it without a word, and its images with it)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        raise UserError(f"cannot read folder '{folder}': {exc.strerror or exc} (fix its permissions)") from None


def _class_names(root, what):
    """Sorted names of the sub-folders of `root` (links to folders included,
    as torchvision's find_classes). A dangling link there is refused: it is
    most often a class folder whose disk is not mounted, and skipping it
    would shift every later class's index."""
    names = []
    for entry in _entries(root):
        if entry.is_dir():
            names.append(entry.name)
        elif entry.is_symlink() and not os.path.exists(entry.path):
            raise UserError(
                f"link '{entry.path}' in {what} '{root}' points to '{os.readlink(entry.path)}', which does not "
                "exist (a class folder on a disk that is not mounted?): fix or remove the link"
            )
    if not names:
        raise UserError(
            f"{what} '{root}' has no class sub-folders (expected ImageFolder layout: {root}/<class>/<image>)"
        )
    return sorted(names)


def _class_target(root, name):
    return os.path.realpath(os.path.join(root, name))


def _inside(path, folder):
    """Is `path` `folder` itself or below it (both real paths)?"""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Guard:
    """The real paths of the data folder and its classes, and the checks that
    use them: on the class folders once, on each folder link met inside one."""

    def __init__(self, root, targets):
        self.root, self.real_root, self.targets = root, os.path.realpath(root), targets
        self._by_real = {real: name for name, real in targets.items()}
        self._check_classes()

    def _check_classes(self):
        owner = {}
        for name, real in self.targets.items():
            path = os.path.join(self.root, name)
            if _inside(self.real_root, real):
                raise UserError(
                    f"class folder '{path}' is '{real}', which holds the data folder '{self.root}' itself: "
                    "its images would be read again under this class (a cycle); remove the link"
                )
            if real in owner:
                raise UserError(
                    f"class folders '{os.path.join(self.root, owner[real])}' and '{path}' are the same folder "
                    f"('{real}'): each class may appear once; remove one of the links"
                )
            owner[real] = name
        for name, real in self.targets.items():
            outer = self._class_holding(os.path.dirname(real))
            if outer is not None:
                raise UserError(
                    f"class folder '{os.path.join(self.root, name)}' ('{real}') lies inside class folder "
                    f"'{os.path.join(self.root, outer)}' ('{self.targets[outer]}'): its images would carry both "
                    "labels; make the class folders separate folders"
                )

    def _class_holding(self, path):
        """The class whose real folder is `path` or one of its ancestors."""
        while True:
            if path in self._by_real:
                return self._by_real[path]
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent

    def folder_link(self, link):
        """The UserError for the folder link `link` inside a class folder."""
        real = os.path.realpath(link)
        head = f"link '{link}' leads to folder '{real}'"
        if _inside(self.real_root, real):
            return UserError(
                f"{head}, which holds the data folder '{self.root}': following it would read the data folder "
                "again under this class (a cycle); remove the link"
            )
        if (
            _inside(real, self.real_root)
            or self._class_holding(real) is not None
            or any(_inside(t, real) for t in self.targets.values())
        ):
            return UserError(
                f"{head}, a folder of the data folder '{self.root}' or of its classes: its images would be read "
                "again, or under this class's label (links to folders inside a class folder are not followed); "
                "remove the link"
            )
        return UserError(
            f"{head}, outside the data folder '{self.root}': links to folders inside a class folder are not "
            "followed; replace the link with the folder itself (or with links to its files)"
        )


def _walk_class(class_path, guard, folders, cut):
    """The image paths of one class folder in torchvision's order, without
    their first `cut` characters (the data folder): folders sorted by path
    as `sorted(os.walk(...))` sorts them, then each folder's image names
    sorted. Each folder listed is recorded in `folders`."""
    found, stack = [], [class_path]
    while stack:
        top = stack.pop()
        folders.append(scan_cache.listed(top))
        images = []
        for entry in _entries(top):
            name = entry.name
            if entry.is_file(follow_symlinks=False):  # a regular file, ImageNet's every entry: tested first
                if name.lower().endswith(IMG_EXTENSIONS):
                    images.append(name)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)  # os.path.join(top, name), as os.walk names it
            elif entry.is_symlink():
                if _followed_link(entry, guard):
                    images.append(name)
            elif is_image_name(name):
                _refuse_special(entry.path, entry.stat(follow_symlinks=False).st_mode)
        found.append((top, images))
    found.sort(key=lambda item: item[0])
    paths = []
    for top, images in found:
        head = top[cut:] + os.sep  # head + name is os.path.join(top, name)[cut:]: top never ends with a separator
        paths.extend(head + name for name in sorted(images))
    return paths


def _followed_link(entry, guard):
    """Is the link `entry` an image (a link to a regular file named like
    one)? Folder links raise; so do dangling links, loops of links and links
    to special files named like images. Other links are not images."""
    image = is_image_name(entry.name)
    try:
        mode = os.stat(entry.path).st_mode
    except OSError as exc:
        if not image:
            return False
        if exc.errno == errno.ELOOP:
            raise UserError(f"image link '{entry.path}' is a loop of links: fix or remove the link") from None
        raise UserError(
            f"image link '{entry.path}' points to '{os.readlink(entry.path)}', which does not exist: fix or "
            "remove the link"
        ) from None
    if stat.S_ISDIR(mode):
        raise guard.folder_link(entry.path)
    if image and not stat.S_ISREG(mode):
        _refuse_special(entry.path, mode, target=os.path.realpath(entry.path))
    return image


def _refuse_special(path, mode, target=None):
    kind = special_kind(mode) or "not a regular file"
    what = f"'{path}' links to '{target}', {kind}" if target else f"'{path}' is {kind}"
    raise UserError(
        f"{what}, not an image file: remove it from the data folder (reading it would block the data loader)"
    )


def open_regular_file(path: str) -> BinaryIO:
    """Open `path` for reading in binary mode, refusing anything but a
    regular file: a FIFO or device put in the tree after it was scanned
    would otherwise block the loader worker that opens it. O_NONBLOCK lets
    the open of a FIFO return at once; fstat then names what was opened."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket file (or a device without its driver)
            _refuse_at_read(path, os.stat(path).st_mode)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            _refuse_at_read(path, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _refuse_at_read(path, mode):
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = special_kind(mode) or "not a regular file"
    raise UserError(f"'{path}' is {kind}, not an image file (the data folder changed after it was scanned): remove it")


class ScannedImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder whose classes and samples come from one
    scan_image_folder (given, or made here): the tree is read once, by the
    scan's rules, and __getitem__ is torchvision's.

    `samples`, `imgs` and `targets` are SampleList/TargetList views of numpy
    arrays (selfsup.data.samples), so that forked loader workers share them;
    assigning a list to any of them (a labelled subset) packs it the same
    way, and each stays its own attribute as in torchvision."""

    def __init__(
        self,
        root: str,
        transform: Callable | None = None,
        loader: Callable[[str], Any] | None = None,
        what: str = "data folder",
        scan: FolderScan | None = None,
    ) -> None:
        scan = scan if scan is not None else scan_image_folder(root, what)
        # DatasetFolder.__init__ would walk the tree again and build a list of
        # every target: only VisionDataset's part is run, the rest comes from the scan.
        datasets.VisionDataset.__init__(self, scan.root, transform=transform)
        self.loader = loader if loader is not None else datasets.folder.default_loader
        self.extensions = IMG_EXTENSIONS
        self.classes, self.class_to_idx = scan.classes, scan.class_to_idx
        self.samples = scan.samples
        self.targets = scan.targets
        self.imgs = self.samples

    def _prefix(self):
        return os.path.join(self.root, "")

    @property
    def samples(self) -> SampleList:
        return self._samples

    @samples.setter
    def samples(self, value: Any) -> None:
        self._samples = as_sample_list(value, self._prefix())

    @property
    def imgs(self) -> SampleList:
        return self._imgs

    @imgs.setter
    def imgs(self, value: Any) -> None:
        self._imgs = as_sample_list(value, self._prefix())

    @property
    def targets(self) -> TargetList | list:
        return self._targets

    @targets.setter
    def targets(self, value: Any) -> None:
        self._targets = as_target_list(value)
