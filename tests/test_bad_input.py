"""Bad input gives one line naming the culprit, and exit status 2."""

import os
import shutil

import pytest
from conftest import run

MOCO = "python3 main_moco.py -a resnet18 -b 4 --moco-k 16 --image-size 16 --small-images -j 0 --epochs 1 "
LINCLS = "python3 main_lincls.py -a resnet18 -b 4 --image-size 16 -j 0 --epochs 1 "


def check_error(result, *needles):
    assert result.returncode == 2, result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture
def broken_data(tiny_data, tmp_path):
    def make(kind):
        root = tmp_path / kind
        shutil.copytree(tiny_data, root)
        train = root / "train"
        if kind == "empty":
            shutil.rmtree(train)
            train.mkdir()
        elif kind == "empty_class":
            (train / "zz_empty").mkdir()
        elif kind == "corrupt":
            first = sorted(os.listdir(train))[0]
            victim = sorted((train / first).iterdir())[0]
            victim.write_bytes(b"this is not a png")
            return str(root), str(victim)
        return str(root), str(train)

    return make


def test_missing_data_folder(tmp_path):
    check_error(run(MOCO + str(tmp_path / "nope"), cwd="moco"), "nope", "does not exist")


def test_empty_data_folder(broken_data):
    root, train = broken_data("empty")
    check_error(run(MOCO + root, cwd="moco"), train, "no class sub-folders")


def test_class_folder_without_images(broken_data):
    root, _ = broken_data("empty_class")
    check_error(run(MOCO + root, cwd="moco"), "zz_empty", "holds no images")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image(broken_data, workers):
    # With loader workers (which ignore SIGTERM, for pre-emption) the process must still exit at once.
    root, victim = broken_data("corrupt")
    check_error(
        run(MOCO + f"-b 60 --moco-k 64 -j {workers} " + root, cwd="moco", timeout=60), victim, "unreadable image"
    )


def test_missing_checkpoint(tiny_data):
    check_error(run(LINCLS + f"--pretrained /no/such.pth.tar {tiny_data}", cwd="moco"), "/no/such.pth.tar")


def test_corrupt_checkpoint(tiny_data, tmp_path):
    bad = tmp_path / "checkpoint_0000.pth.tar"
    bad.write_bytes(b"garbage")
    check_error(run(LINCLS + f"--pretrained {bad} {tiny_data}", cwd="moco"), str(bad), "not a readable")


@pytest.mark.parametrize(
    "flags,needle",
    [
        ("--hidden 512", "needs --mlp"),
        ("--mlp --resume x.pth --resume-ckpt", "choose one"),
        ("--moco-k 2", "--moco-k 2"),
        ("-a resnet9000", "close matches: resnet200"),
        ("--epochs 1 --start-epoch 3", "nothing to train"),
    ],
)
def test_conflicting_flags(tiny_data, flags, needle):
    check_error(run(MOCO + flags + " " + tiny_data, cwd="moco"), needle)


def test_resume_of_missing_file(tiny_data):
    check_error(run(MOCO + f"--resume /no/ckpt.pth.tar {tiny_data}", cwd="moco"), "/no/ckpt.pth.tar")


def test_gpu_flag_without_gpu(tiny_data):
    check_error(run(MOCO + f"--gpu 0 {tiny_data}", cwd="moco", env={"CUDA_VISIBLE_DEVICES": ""}), "--gpu 0")


# ---- every flag checked up front: the table of docs/bad-input.md ----------
import importlib.util  # noqa: E402
import socket  # noqa: E402

from conftest import REPO  # noqa: E402

_SCRIPTS = {}


def script(path):
    """A script of the repository imported as a module (its folder is not a package)."""
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location("script_" + path.replace("/", "_")[:-3], os.path.join(REPO, path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def one_error(capsys, path, argv):
    """Run the script's main(argv) in this process: it must stop with status 2
    and exactly one line, `error: ...`, before doing any work."""
    with pytest.raises(SystemExit) as exit_info:
        script(path).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def places(tmp_path):
    """A file, a path under that file, and a folder no one may write."""
    f = tmp_path / "a_file"
    f.write_text("x")
    return {"FILE": str(f), "UNDERFILE": str(f / "sub"), "RO": "/sys/no_write_here", "TMP": str(tmp_path)}


def fill(argv, places, data):
    """Put the real paths in for FILE, UNDERFILE, RO, TMP and DATA (also as a prefix: FILE/x)."""
    out = []
    for a in argv:
        head, sep, tail = a.partition("/")
        real = places.get(head, data if head == "DATA" else None)
        out.append(real + sep + tail if real else a)
    return out


M, L, D, R = "moco/main_moco.py", "moco/main_lincls.py", "DisCo/main.py", "DisCo/main_moco_distill_rkd.py"
S, E = "swav-master/main_swav.py", "swav-master/eval_linear.py"
# (script, flags, what the one line must contain)
FLAG_ROWS = [
    (M, "--image-size 0", "--image-size 0: expected a positive number of pixels"),
    (M, "-p 0", "-p/--print-freq 0: expected a positive"),
    (M, "--lr -1", "--lr -1: expected a learning rate >= 0"),
    (M, "--momentum 1.5", "--momentum 1.5: expected a number in [0, 1]"),
    (M, "--wd -0.1", "--wd/--weight-decay -0.1: expected a number >= 0"),
    (M, "--epochs 0", "--epochs 0: expected a positive number"),
    (M, "--start-epoch -1", "--start-epoch -1: expected 0 or more"),
    (M, "-j -1", "-j/--workers -1: expected 0 or more"),
    (M, "--schedule 10 -5 --epochs 200", "--schedule 10 -5: expected epochs >= 0"),
    (M, "--seed -1", "--seed -1: expected an integer in [0, 2**32)"),
    (M, "--gpu -1", "--gpu -1: expected a GPU index"),
    (M, "--cpu-procs 0", "--cpu-procs 0: expected 1 or more"),
    (M, "--bn-splits 0", "--bn-splits 0: expected 1 or more BatchNorm groups"),
    (M, "--moco-dim 0", "--moco-dim 0: expected a positive embedding width"),
    (M, "--moco-t 0", "--moco-t 0: expected a temperature > 0"),
    (M, "--moco-m 2", "--moco-m 2: expected a number in [0, 1]"),
    (M, "--moco-k 0", "--moco-k 0: expected a positive queue size"),
    (M, "--crop-min 0", "--crop-min 0.0: expected a share of the image's area in (0, 1]"),
    (M, "--crop-min 1.5", "--crop-min 1.5: expected a share of the image's area in (0, 1]"),
    (M, "--mlp --hidden -2", "--hidden -2: expected -1"),
    (M, "--gamma -1", "--gamma -1: expected a number >= 0"),
    (M, "--dist-url garbage", "--dist-url 'garbage': expected tcp://HOST:PORT"),
    (M, "--dist-url tcp://localhost:99999", "(port 1-65535)"),
    (M, "--dist-url http://host:1234", "expected tcp://HOST:PORT, env:// or file:///PATH"),
    (M, "--dist-backend foo", "--dist-backend foo: expected nccl or gloo"),
    (M, "--dist-timeout 0", "--dist-timeout 0: expected a positive number of seconds"),
    (M, "--world-size 0", "--world-size 0: expected the number of nodes"),
    (M, "--world-size 2 --rank 2", "--rank 2 with --world-size 2: expected a rank below 2"),
    (M, "--multiprocessing-distributed --world-size 2", "give each node its --rank"),
    (M, "--ckpt-dir FILE", "is a file: expected a folder"),
    (M, "--ckpt-dir UNDERFILE", "is a file, so no folder can be made there"),
    (M, "--ckpt-dir RO", "cannot write in '/sys'"),
    (L, "--lr 1e300", "--lr 1e+300: expected a learning rate >= 0 (and finite)"),
    (L, "--gamma -0.5", "--gamma -0.5: expected a number >= 0"),
    (L, "-p 0", "-p/--print-freq 0"),
    (L, "--ckpt-dir FILE", "--ckpt-dir"),
    (D, "--teacher t.pth --nmb_prototypes -1", "--nmb_prototypes -1: expected 0 (none) or more"),
    (D, "--teacher t.pth --bn-splits 0", "--bn-splits 0"),
    (R, "--teacher t.pth --rkd-dist-weight -1", "--rkd-dist-weight -1: expected a number >= 0"),
    (S, "--temperature 0", "--temperature 0: expected a temperature > 0"),
    (S, "--epsilon 0", "--epsilon 0: expected a number > 0"),
    (S, "--base_lr -1", "--base_lr -1: expected a learning rate >= 0"),
    (S, "--sinkhorn_iterations 0", "--sinkhorn_iterations 0: expected 1 or more"),
    (S, "--queue_length -1", "--queue_length -1: expected 0 (no queue) or more"),
    (S, "--checkpoint_freq 0", "--checkpoint_freq 0: expected a positive number of epochs"),
    (S, "--print_freq 0", "--print_freq 0"),
    (S, "--dist_url garbage", "--dist_url 'garbage'"),
    (S, "--dist_timeout -1", "--dist_timeout -1: expected a positive number of seconds"),
    (S, "--dump_path FILE", "--dump_path"),
    (S, "--dump_path UNDERFILE", "is a file, so no folder can be made there"),
    (E, "--lr -1", "--lr -1: expected a learning rate >= 0"),
    (E, "--decay_epochs 60 -1", "--decay_epochs 60 -1: expected epochs >= 0"),
    (E, "--image_size 0", "--image_size 0: expected a positive number of pixels"),
    (E, "--dump_path FILE", "--dump_path"),
    ("DisCo/export_embed.py", "--pretrained x.pth --out FILE DATA", "--out"),
    ("DisCo/export_embed.py", "--pretrained x.pth --out UNDERFILE DATA", "no folder can be made there"),
    ("DisCo/draw.py", "--out UNDERFILE/t.png", "no folder can be made there"),
    ("DisCo/draw.py", "--out TMP", "is a folder: expected a file name"),
    ("DisCo/draw.py", "--perplexity 0", "--perplexity 0: expected a number > 0"),
    ("data/cal_mi.py", "--out-dir FILE", "--out-dir"),
    ("data/cal_mi.py", "--bins 1", "--bins/--sweep 1: expected bin counts of 2 or more"),
    ("data/imagenet_1_fraction.py", "--balanced --ratio 0 --source DATA", "--ratio 0: expected a percentage"),
    ("data/imagenet_1_fraction.py", "--balanced --ratio 10 --source DATA --output FILE", "is a file"),
]
_SWAV_TINY = {S: ["--data_path", "DATA/train"], E: ["--data_path", "DATA"]}


@pytest.mark.parametrize("path,flags,needle", FLAG_ROWS, ids=[f"{p.split('/')[-1]} {f}" for p, f, _ in FLAG_ROWS])
def test_flag_is_one_line_before_any_work(capsys, places, tiny_data, monkeypatch, path, flags, needle):
    monkeypatch.chdir(places["TMP"])  # the default --ckpt-dir/--dump_path land here
    argv = fill(flags.split() + _SWAV_TINY.get(path, []), places, tiny_data)
    if path in (M, L, D, R):
        argv.append(tiny_data)
    assert needle in one_error(capsys, path, argv)


def test_port_in_use_is_one_line_at_once():
    from selfsup.core.errors import UserError
    from selfsup.engine.runtime import check_rendezvous

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} is in use"):
            check_rendezvous(f"tcp://127.0.0.1:{port}", 0)
    check_rendezvous(f"tcp://127.0.0.1:{port}", 0)  # free again: accepted
    check_rendezvous(f"tcp://127.0.0.1:{port}", 1)  # only rank 0 binds the port


def test_port_in_use_via_the_script(tiny_data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(
            MOCO + f"--resume '' --multiprocessing-distributed --world-size 2 --rank 0 "
            f"--dist-url tcp://127.0.0.1:{port} --ckpt-dir {tmp_path} {tiny_data}",
            cwd="moco",
            timeout=60,
        )
    check_error(r, f"port {port} is in use")


def test_unresolvable_host_is_one_line_at_once():
    from selfsup.core.errors import UserError
    from selfsup.engine.runtime import check_rendezvous

    with pytest.raises(UserError, match="'no-such-host.invalid' cannot be resolved"):
        check_rendezvous("tcp://no-such-host.invalid:23456", 1)


def test_corrupt_cifar_archive(tmp_path):
    from selfsup.core.errors import UserError
    from selfsup.data.cifar import cifar_folder

    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(200))  # gzip magic, then junk
    with pytest.raises(UserError, match="is corrupt or truncated"):
        cifar_folder(str(tmp_path), "cifar10")
    assert sorted(os.listdir(tmp_path)) == ["cifar-10-python.tar.gz"]  # nothing half-unpacked stays


def _fraction(capsys, argv):
    mod = script("data/imagenet_1_fraction.py")
    try:
        mod.main(argv)
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]
    capsys.readouterr()
    return None


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_fraction_output_overlapping_source(capsys, tiny_data, tmp_path, where):
    src = tmp_path / "src"
    shutil.copytree(tiny_data, src)
    out = {"same": src, "inside": src / "train" / "sub", "around": tmp_path}[where]
    line = _fraction(capsys, ["--balanced", "--ratio", "50", "--source", str(src), "--output", str(out)])
    assert line and "overlap" in line
    assert not (src / "train" / "sub").exists()


def test_fraction_refuses_stale_output_and_overwrite_replaces(capsys, tiny_data, tmp_path):
    out = tmp_path / "out"
    base = ["--balanced", "--source", tiny_data, "--output", str(out)]
    assert _fraction(capsys, base + ["--ratio", "50"]) is None
    assert _fraction(capsys, base + ["--ratio", "50"]) is None  # same subset: a rerun is fine
    line = _fraction(capsys, base + ["--ratio", "10"])
    assert line and "already holds another subset (--ratio 50)" in line
    assert _fraction(capsys, base + ["--ratio", "10", "--overwrite"]) is None
    # 10 classes of 6 images: ceil(10% of 6) = 1 each, and none of the ratio-50 run stays.
    per_class = {c: len(os.listdir(out / "train" / c)) for c in os.listdir(out / "train")}
    assert per_class == {c: 1 for c in os.listdir(os.path.join(tiny_data, "train"))}


def test_fraction_refuses_a_folder_it_did_not_make(capsys, tiny_data, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    line = _fraction(capsys, ["--balanced", "--ratio", "50", "--source", tiny_data, "--output", str(tmp_path)])
    assert line and "files this script did not make" in line
    line = _fraction(
        capsys, ["--balanced", "--ratio", "50", "--source", tiny_data, "--output", str(tmp_path), "--overwrite"]
    )
    assert line and "holds files other than train/ and val/" in line
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_skip_bad_images_replaces_and_counts(broken_data, monkeypatch, capsys):
    import torch

    from selfsup.core.checks import SKIP_BAD_IMAGES_ENV
    from selfsup.data import folders as D

    root, victim = broken_data("corrupt")
    train = os.path.join(root, "train")
    plain = D.image_folder(train, None)
    bad_index = [p for p, _ in plain.samples].index(victim)
    with pytest.raises(Exception, match="unreadable image"):
        plain[bad_index]
    monkeypatch.setenv(SKIP_BAD_IMAGES_ENV, "1")
    ds = D.image_folder(train, lambda img: torch.tensor(img.size))
    n = len(ds)
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=0)
    assert sum(len(t) for _, t in loader) == n  # every batch kept its size
    assert D.report_skipped(ds, 0) == 1
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    assert ds[bad_index][1] == ds[(bad_index + 1) % n][1]  # replaced by the next image
    assert D.report_skipped(ds, 1) == 1 and D.report_skipped(ds, 2) == 0  # the count is per epoch


def test_skip_bad_images_in_a_linear_evaluation(broken_data, tmp_path):
    root, victim = broken_data("corrupt")
    r = run(LINCLS + f"--skip-bad-images --resume '' --ckpt-dir {tmp_path} {root}", cwd="moco", timeout=120)
    assert r.returncode == 0, r.stdout
    assert f"skipping unreadable image '{victim}'" in r.stdout
    assert "=> epoch 0: skipped 1 unreadable image (--skip-bad-images)" in r.stdout


def test_diverging_linear_evaluation_stops_without_model_best(tiny_data, tmp_path):
    r = run(LINCLS + f"--lr 1e38 --resume '' --ckpt-dir {tmp_path} {tiny_data}", cwd="moco", timeout=120)
    check_error(r, "loss became nan", "lower --lr")
    assert not (tmp_path / "model_best.pth.tar").exists()
    assert "Acc@1" not in r.stdout.splitlines()[-1]


def test_diverging_swav_linear_evaluation_stops(tiny_data, tmp_path):
    r = run(
        f"python3 eval_linear.py --arch resnet18 --image_size 16 --batch_size 4 --epochs 1 --workers 0 "
        f"--lr 1e38 --data_path {tiny_data} --dump_path {tmp_path}",
        cwd="swav-master",
        timeout=120,
    )
    check_error(r, "loss became nan", "lower --lr")
    assert not (tmp_path / "checkpoint.pth.tar").exists()
