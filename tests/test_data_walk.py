"""The one scan of a data folder (selfsup.data.scan): torchvision's classes
and samples in torchvision's order on a normal tree, and one line naming the
path for link cycles, links out of a class, dangling links and special files
(FIFOs, sockets, devices), at scan time and at read time."""

import os
import re
import shlex
import shutil
import socket

import pytest
from conftest import REPO, TINY_LINCLS, TINY_PRETRAIN, run
from torchvision import datasets

from selfsup.core.errors import UserError
from selfsup.data import folders as D
from selfsup.data import jpeg
from selfsup.data import scan as S
from selfsup.data.subset import class_files, write_subset


def touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def small_tree(root):
    """Two classes of empty 'images' (the scan never opens a file)."""
    for c in ("a", "b"):
        for i in range(3):
            touch(os.path.join(root, c, f"{c}{i}.png"))
    return str(root)


def scan_error(root):
    with pytest.raises(UserError) as e:
        S.scan_image_folder(root)
    line = str(e.value)
    assert "\n" not in line
    return line


def torchvision_view(root):
    classes, class_to_idx = datasets.folder.find_classes(root)
    samples = datasets.folder.make_dataset(root, class_to_idx, extensions=datasets.folder.IMG_EXTENSIONS)
    return classes, class_to_idx, samples


def test_scan_is_torchvisions_make_dataset_on_a_nested_tree(tmp_path):
    root = tmp_path / "data"
    names = [
        "a/x.png",
        "a/Y.JPG",  # the extension test is case-blind
        "a/notes.txt",  # not an image: left out
        "a/.hidden.png",  # torchvision keeps dot-files
        "a/sub/z.png",
        "a/sub b/w.png",  # 'sub b' sorts between 'sub' and 'sub/deep' in sorted(os.walk(...))
        "a/sub/deep/q.jpeg",
        "a/sub2/k.bmp",
        "a/x.png.dir/inner.webp",  # a folder named like an image is walked, not a sample
        "b/only/in/a/sub-folder.tif",
        ".dotclass/h.png",
        "c d/1.ppm",
    ]
    for n in names:
        touch(str(root / n))
    (tmp_path / "outside").mkdir()
    touch(str(tmp_path / "outside" / "linked.png"))
    os.symlink(tmp_path / "outside", root / "e_linked_class")  # a class folder that is a link
    os.symlink(tmp_path / "outside" / "linked.png", root / "a" / "file_link.png")  # file links are followed
    scan = S.scan_image_folder(str(root))
    classes, class_to_idx, samples = torchvision_view(str(root))
    assert (scan.classes, scan.class_to_idx, scan.samples) == (classes, class_to_idx, samples)
    assert len(samples) == 13 and scan.classes == [".dotclass", "a", "b", "c d", "e_linked_class"]
    ds = D.image_folder(str(root), None)
    assert (ds.classes, ds.class_to_idx, ds.samples, ds.imgs) == (classes, class_to_idx, samples, samples)
    assert ds.targets == [t for _, t in samples]


def test_images_only_in_sub_folders_of_a_class_are_accepted(tmp_path):
    # The old check listed the class folder's own files only and said "holds no images".
    root = small_tree(tmp_path / "data")
    touch(str(tmp_path / "data" / "c" / "2024" / "jan" / "c0.png"))
    scan = D.check_image_folder(root)
    assert scan.samples[-1] == (os.path.join(root, "c", "2024", "jan", "c0.png"), 2)
    assert class_files(root)["c"] == [os.path.join("2024", "jan", "c0.png")]
    n = write_subset(root, str(tmp_path / "copy"), {"c": class_files(root)["c"]})
    assert n == 1 and os.path.isfile(tmp_path / "copy" / "c" / "2024" / "jan" / "c0.png")


def test_image_folder_reads_the_tree_once(tmp_path, monkeypatch):
    root = small_tree(tmp_path / "data")
    calls = []
    real = S.scan_image_folder
    monkeypatch.setattr(D, "scan_image_folder", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(S, "scan_image_folder", lambda *a: calls.append(a) or real(*a))
    ds = D.image_folder(root, None)
    assert len(calls) == 1 and len(ds) == 6
    calls.clear()
    assert len(jpeg.EncodedImageFolder(root)) == 6 and len(calls) == 1
    calls.clear()
    scan = D.check_image_folder(root)
    shutil.rmtree(os.path.join(root, "b"))  # a given scan is used as it is: the tree is not read again
    assert len(D.image_folder(root, None, scan=scan)) == 6 and len(calls) == 1


def test_link_to_the_data_folder_inside_a_class_is_refused(tmp_path):
    # The adversary's case: `ln -s .. up` in a class folder read every class again under this one.
    root = small_tree(tmp_path / "data")
    link = os.path.join(root, "a", "up")
    os.symlink("..", link)
    line = scan_error(root)
    assert f"link '{link}' leads to folder '{os.path.realpath(root)}', which holds the data folder" in line
    assert "remove the link" in line


def test_link_above_the_data_folder_is_refused(tmp_path):
    root = small_tree(tmp_path / "deep" / "data")
    link = os.path.join(root, "a", "sub", "top")
    os.makedirs(os.path.dirname(link))
    os.symlink("../../..", link)  # deep/, which holds data/
    line = scan_error(root)
    assert f"link '{link}' leads to folder '{tmp_path / 'deep'}', which holds the data folder" in line


def test_link_to_another_class_inside_a_class_is_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    link = os.path.join(root, "a", "more")
    os.symlink("../b", link)  # b's images would be labelled a as well
    line = scan_error(root)
    assert f"link '{link}' leads to folder '{os.path.realpath(os.path.join(root, 'b'))}'" in line
    assert "read again, or under this class's label" in line


def test_folder_link_out_of_the_data_folder_says_to_replace_it(tmp_path):
    root = small_tree(tmp_path / "data")
    touch(str(tmp_path / "elsewhere" / "e.png"))
    link = os.path.join(root, "a", "extra")
    os.symlink(tmp_path / "elsewhere", link)
    line = scan_error(root)
    assert f"link '{link}' leads to folder '{tmp_path / 'elsewhere'}', outside the data folder" in line
    assert "replace the link with the folder itself" in line


def test_dangling_image_link_is_named(tmp_path):
    root = small_tree(tmp_path / "data")
    link = os.path.join(root, "b", "gone.png")
    os.symlink("/no/such/image.png", link)
    os.symlink("/no/such/notes", os.path.join(root, "b", "notes"))  # not named like an image: never read
    assert scan_error(root) == (
        f"image link '{link}' points to '/no/such/image.png', which does not exist: fix or remove the link"
    )


def test_loop_of_links_is_named(tmp_path):
    root = small_tree(tmp_path / "data")
    a, b = os.path.join(root, "a", "p.png"), os.path.join(root, "a", "q.png")
    os.symlink("q.png", a)
    os.symlink("p.png", b)
    assert f"image link '{a}' is a loop of links" in scan_error(root)


def test_fifo_among_the_images_is_refused_at_scan_time(tmp_path):
    root = small_tree(tmp_path / "data")
    fifo = os.path.join(root, "b", "b9.png")
    os.mkfifo(fifo)
    os.mkfifo(os.path.join(root, "b", "pipe"))  # not named like an image: torchvision never opens it either
    assert scan_error(root) == (
        f"'{fifo}' is a FIFO (named pipe), not an image file: remove it from the data folder "
        "(reading it would block the data loader)"
    )


def test_socket_among_the_images_is_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    path = os.path.join(root, "a", "a9.jpg")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        assert f"'{path}' is a socket, not an image file" in scan_error(root)


def test_link_to_a_device_is_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    link = os.path.join(root, "a", "zero.png")
    os.symlink("/dev/zero", link)
    assert f"'{link}' links to '/dev/zero', a character device, not an image file" in scan_error(root)


def test_two_class_names_for_one_folder_are_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    os.symlink("a", os.path.join(root, "c"))
    line = scan_error(root)
    assert f"class folders '{os.path.join(root, 'a')}' and '{os.path.join(root, 'c')}' are the same folder" in line


def test_class_folder_linking_to_the_data_folder_is_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    os.symlink(".", os.path.join(root, "all"))
    line = scan_error(root)
    assert f"class folder '{os.path.join(root, 'all')}' is '{os.path.realpath(root)}'" in line
    assert "holds the data folder" in line


def test_class_folder_inside_another_class_is_refused(tmp_path):
    root = small_tree(tmp_path / "data")
    touch(os.path.join(root, "a", "sub", "s.png"))
    os.symlink(os.path.join("a", "sub"), os.path.join(root, "c"))
    line = scan_error(root)
    assert f"class folder '{os.path.join(root, 'c')}'" in line and "lies inside class folder" in line


def test_dangling_class_folder_link_is_refused(tmp_path):
    # Skipped as torchvision does, every later class's index would shift by one.
    root = small_tree(tmp_path / "data")
    os.symlink("/mnt/unmounted/n02", os.path.join(root, "aa"))
    line = scan_error(root)
    assert f"link '{os.path.join(root, 'aa')}'" in line and "'/mnt/unmounted/n02', which does not exist" in line


def test_data_folder_that_is_a_file(tmp_path):
    path = tmp_path / "train"
    path.write_text("not a folder")
    assert scan_error(str(path)).startswith(f"data folder '{path}' is not a folder")


def test_unreadable_folder_is_named_not_skipped(tmp_path, monkeypatch):
    # The tests run as root, whom chmod does not stop: the refusal of the OS is simulated.
    root = small_tree(tmp_path / "data")
    locked = os.path.join(root, "b")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(S.os, "scandir", scandir)
    assert scan_error(root) == f"cannot read folder '{locked}': Permission denied (fix its permissions)"


def in_subprocess(code, timeout=120):
    """Run `code` in a fresh python: a hang fails the test at the timeout
    instead of hanging the suite."""
    return run(f"python3 -c {shlex.quote(code)}", timeout=timeout)


def test_fifo_put_in_after_the_scan_is_refused_when_read(tiny_data, tmp_path):
    root = str(tmp_path / "train")
    shutil.copytree(os.path.join(tiny_data, "train"), root)
    code = f"""
import os
from selfsup.core.errors import UserError
from selfsup.data import folders as D, jpeg
ds = D.image_folder({root!r}, None)
path = ds.samples[3][0]
os.remove(path)
os.mkfifo(path)
for read in (lambda: ds[3], lambda: jpeg.read_encoded(path)):
    try:
        read()
    except UserError as e:
        print("LINE", e, "BAD", getattr(e, "bad_image", None) == path)
"""
    r = in_subprocess(code)
    assert r.returncode == 0, r.stdout
    lines = [line for line in r.stdout.splitlines() if line.startswith("LINE")]
    assert len(lines) == 2, r.stdout
    assert all(
        "is a FIFO (named pipe), not an image file (the data folder changed after it was scanned)" in x for x in lines
    )
    assert lines[0].endswith("BAD True")


def test_skip_bad_images_skips_a_fifo_met_when_read(tiny_data, tmp_path):
    root = str(tmp_path / "train")
    shutil.copytree(os.path.join(tiny_data, "train"), root)
    code = f"""
import os
from selfsup.core.checks import SKIP_BAD_IMAGES_ENV
os.environ[SKIP_BAD_IMAGES_ENV] = "1"
from selfsup.data import folders as D
ds = D.image_folder({root!r}, None)
path = ds.samples[3][0]
os.remove(path)
os.mkfifo(path)
img, target = ds[3]
print("GOT", target == ds.samples[4][1], D.report_skipped(ds, 0))
"""
    r = in_subprocess(code)
    assert r.returncode == 0, r.stdout
    assert "GOT True 1" in r.stdout and "=> skipping" in r.stdout and "FIFO" in r.stdout


@pytest.fixture
def data_with(tiny_data, tmp_path):
    """A copy of tiny_data with something put into one class folder of `split`."""

    def make(split, what):
        root = tmp_path / "data"
        shutil.copytree(tiny_data, root)
        cls = root / split / sorted(os.listdir(root / split))[0]
        path = cls / ("intruder.png" if what == "fifo" else "up")
        os.mkfifo(path) if what == "fifo" else os.symlink("..", path)
        return str(root), str(path)

    return make


def one_error_line(result):
    assert result.returncode == 2, result.stdout[-3000:]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout[-3000:]
    return errors[0]


def test_moco_stops_at_a_fifo_before_any_batch(data_with, tmp_path):
    root, fifo = data_with("train", "fifo")
    cmd = f"python3 moco/main_moco.py -a resnet18 {TINY_PRETRAIN} -j 2 --ckpt-dir {tmp_path / 'ckpt'} {root}"
    line = one_error_line(run(cmd, timeout=180))  # it used to hang after batch 0
    assert f"'{fifo}' is a FIFO (named pipe), not an image file" in line


def test_lincls_stops_at_a_link_cycle_in_val(data_with, tmp_path):
    root, link = data_with("val", "cycle")
    cmd = f"python3 moco/main_lincls.py -a resnet18 {TINY_LINCLS} --ckpt-dir {tmp_path / 'ckpt'} {root}"
    line = one_error_line(run(cmd, timeout=180))
    assert f"link '{link}' leads to folder" in line and "which holds the data folder" in line


def test_swav_stops_at_a_fifo(data_with, tmp_path):
    root, fifo = data_with("train", "fifo")
    cmd = (
        f"python3 swav-master/main_swav.py --arch resnet18 --epochs 1 --batch_size 4 --size_crops 16 --nmb_crops 2 "
        f"--small_images true --nmb_prototypes 30 --workers 2 --data_path {root}/train --dump_path {tmp_path / 'd'}"
    )
    line = one_error_line(run(cmd, timeout=180))
    assert f"'{fifo}' is a FIFO (named pipe), not an image file" in line


def test_fraction_refuses_a_fifo_in_val_before_copying(data_with, tmp_path):
    root, fifo = data_with("val", "fifo")
    out = tmp_path / "frac"
    cmd = f"python3 data/imagenet_1_fraction.py --balanced --ratio 50 --source {root} --output {out}"
    line = one_error_line(run(cmd, timeout=120))
    assert f"'{fifo}' is a FIFO (named pipe)" in line
    assert not os.path.exists(out / "train")  # nothing was copied


def test_repo_builds_image_folders_only_through_the_scan():
    """Every ImageFolder over user data is a ScannedImageFolder: no module
    constructs torchvision's own (which walks links blindly)."""
    offenders = []
    for top in ("selfsup", "DisCo", "swav-master", "data", "moco", "tools", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    text = open(path, encoding="utf-8").read()
                    if re.search(r"(?<!\w)ImageFolder\(", text):  # ScannedImageFolder( does not match
                        offenders.append(os.path.relpath(path, REPO))
    assert offenders == []
