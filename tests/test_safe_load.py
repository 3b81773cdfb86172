"""No checkpoint or data pickle can run code when a script loads it (issue 14).

A payload is an object whose unpickling calls open(marker, "w"): the marker
file appears exactly when a load executed the file's code. Each loading flag
of each script gets one; it must refuse it in one `error:` line naming the
file and --unsafe-load. Files the project writes, the official release
layouts and the official CIFAR files (by md5) still load by default."""

import argparse
import collections
import fractions
import importlib.util
import os
import pickle
import re
import shutil

import pytest
import torch
import torchvision
from conftest import REPO, TINY_PRETRAIN, run
from layouts import moco_v2_checkpoint, pretend_official_cifar, swav_release_state, write_cifar


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_payload(path, marker):
    """A torch.save'd checkpoint (zip format) with a payload next to real tensors."""
    torch.save(
        {"epoch": 1, "arch": "resnet18", "state_dict": {"module.conv1.weight": torch.zeros(1)}, "x": Payload(marker)},
        path,
    )


def raw_payload(path, marker):
    with open(path, "wb") as f:
        pickle.dump({b"data": Payload(marker), b"labels": [0]}, f)


def test_the_payloads_run_code_when_loaded_unsafely(tmp_path):
    """The test's payloads are real: a plain load does create the marker."""
    for write, load in (
        (torch_payload, lambda p: torch.load(p, weights_only=False)),
        (raw_payload, lambda p: pickle.load(open(p, "rb"))),
    ):
        marker = tmp_path / f"marker_{write.__name__}"
        write(tmp_path / "f", str(marker))
        load(tmp_path / "f")
        assert marker.exists()


SWAV_TINY = (
    "--arch resnet18 --small_images true --size_crops 16 --nmb_crops 2 --min_scale_crops 0.14 "
    "--max_scale_crops 1 --nmb_prototypes 10 --workers 0 --batch_size 30 --epochs 1"
)
LINCLS_TINY = "-a resnet18 --epochs 1 -b 30 --image-size 16 -j 0"

# (case, command with {bad} {data} {out}, where the payload goes (None: {bad}), payload kind)
CASES = [
    (
        "main_lincls --pretrained",
        "python3 moco/main_lincls.py {lincls} --pretrained {bad} --ckpt-dir {out} {data}",
        None,
        "torch",
    ),
    (
        "main_lincls --resume",
        "python3 moco/main_lincls.py {lincls} --resume {bad} --ckpt-dir {out} {data}",
        None,
        "torch",
    ),
    (
        "DisCo main_lincls --pretrained",
        "python3 DisCo/main_lincls.py {lincls} --pretrained {bad} --ckpt-dir {out} {data}",
        None,
        "torch",
    ),
    (
        "DisCo main --teacher",
        "python3 DisCo/main.py -a resnet18 --teacher_arch resnet18 --teacher {bad} {pretrain} --ckpt-dir {out} {data}",
        None,
        "torch",
    ),
    (
        "main_moco --resume",
        "python3 moco/main_moco.py -a resnet18 {pretrain} --resume {bad} --ckpt-dir {out} {data}",
        None,
        "torch",
    ),
    (
        "main_moco --resume-ckpt",
        "python3 moco/main_moco.py -a resnet18 {pretrain} --resume-ckpt --ckpt-dir {out} {data}",
        "checkpoint_0007.pth.tar",
        "torch",
    ),
    (
        "main_swav restart",
        "python3 swav-master/main_swav.py {swav} --data_path {data}/train --dump_path {out}",
        "checkpoint.pth.tar",
        "torch",
    ),
    # A queue0.pth planted without a checkpoint is not read: a fresh run moves it aside (docs/resume.md).
    (
        "main_swav_distill --pretrained",
        "python3 swav-master/main_swav_distill.py {swav} --teacher_arch resnet18 "
        "--pretrained {bad} --data_path {data}/train --dump_path {out}",
        None,
        "torch",
    ),
    (
        "eval_linear --pretrained",
        "python3 swav-master/eval_linear.py --arch resnet18 --pretrained {bad} "
        "--image_size 16 --workers 0 --epochs 1 --data_path {data} --dump_path {out}",
        None,
        "torch",
    ),
    (
        "eval_linear restart",
        "python3 swav-master/eval_linear.py --arch resnet18 --image_size 16 --workers 0 "
        "--epochs 1 --data_path {data} --dump_path {out}",
        "checkpoint.pth.tar",
        "torch",
    ),
    (
        "export_embed --pretrained",
        "python3 DisCo/export_embed.py -a resnet18 --pretrained {bad} -j 0 --out {out} {data}",
        None,
        "torch",
    ),
    ("detection converter", "python3 detection/convert-pretrain-to-detectron2.py {bad} {out}/o.pkl", None, "torch"),
    (
        "detection converter, raw pickle",
        "python3 detection/convert-pretrain-to-detectron2.py {bad} {out}/o.pkl",
        None,
        "raw",
    ),
    (
        "CIFAR data batch",
        "python3 DisCo/cifar_main_lincls.py {lincls} --ckpt-dir {out}/ck {out}",
        "cifar-10-batches-py/data_batch_1",
        "raw",
    ),
    (
        "CIFAR batches.meta",
        "python3 DisCo/cifar_main_lincls.py {lincls} --ckpt-dir {out}/ck {out}",
        "cifar-10-batches-py/batches.meta",
        "raw",
    ),
]


@pytest.mark.parametrize("case,cmd,planted,kind", CASES, ids=[c[0] for c in CASES])
def test_a_payload_is_refused_by_every_loading_flag(tiny_data, tmp_path, monkeypatch, case, cmd, planted, kind):
    out = tmp_path / "out"
    out.mkdir()
    if planted and planted.startswith("cifar"):
        write_cifar(str(out), "cifar10")  # the rest of the layout around the planted file
    bad = out / planted if planted else tmp_path / "bad.pth.tar"
    marker = tmp_path / "MARKER"
    (torch_payload if kind == "torch" else raw_payload)(bad, str(marker))
    monkeypatch.delenv("SELFSUP_UNSAFE_LOAD", raising=False)
    r = run(
        cmd.format(bad=bad, data=tiny_data, out=out, lincls=LINCLS_TINY, pretrain=TINY_PRETRAIN, swav=SWAV_TINY),
        timeout=300,
    )
    assert not marker.exists(), f"{case}: the payload ran\n{r.stdout}"
    assert r.returncode != 0, r.stdout
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and "--unsafe-load" in last, r.stdout
    assert "Traceback" not in r.stdout, r.stdout


# -- legitimate files still load with the default -------------------------------


def _script(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3] + "_safe", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Checkpoints written by the project's own scripts (in-process, one tiny
    step each): MoCo, then DisCo with it as teacher, lincls of the DisCo
    student, SwAV with its queue. Every load on the way is a default one."""
    from selfsup.data.builtin import prepare

    assert os.environ.get("SELFSUP_UNSAFE_LOAD") is None
    root = tmp_path_factory.mktemp("written")
    data = str(root / "data")
    prepare(data, train_per_class=1, val_per_class=1, size=16, seed=2)  # 10 + 10 images
    tiny = ["-a", "resnet18", "--epochs", "1", "-b", "10", "--image-size", "16", "--small-images", "-j", "0"]
    _script("moco/main_moco.py").main(tiny + ["--moco-k", "10", "--mlp", "--ckpt-dir", str(root / "moco"), data])
    moco = str(root / "moco" / "checkpoint_0000.pth.tar")
    _script("DisCo/main.py").main(
        tiny
        + ["--moco-k", "10", "--teacher_arch", "resnet18", "--teacher", moco, "--ckpt-dir", str(root / "disco"), data]
    )
    disco = str(root / "disco" / "checkpoint_0000.pth.tar")
    _script("moco/main_lincls.py").main(tiny + ["--pretrained", disco, "--ckpt-dir", str(root / "lincls"), data])
    _script("swav-master/main_swav.py").main(
        SWAV_TINY.replace("--batch_size 30", "--batch_size 10").split()
        + [
            "--queue_length",
            "10",
            "--epoch_queue_starts",
            "0",
            "--data_path",
            os.path.join(data, "train"),
            "--dump_path",
            str(root / "swav"),
        ]
    )
    yield {
        "moco": moco,
        "disco": disco,
        "lincls": str(root / "lincls" / "checkpoint.pth.tar"),
        "swav": str(root / "swav" / "checkpoint.pth.tar"),
        "swav queue": str(root / "swav" / "queue0.pth"),
    }
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("name", ["moco", "disco", "lincls", "swav", "swav queue"])
def test_files_the_project_writes_load_by_default(written, name):
    from selfsup.core.checkpoint import load_file

    path = written[name]
    # torch's own weights_only list suffices (no allow-list entry is needed)...
    plain = torch.load(path, map_location="cpu", weights_only=True)
    # ...and the project's loader reads the same content by default.
    ours = load_file(path)
    assert ours.keys() == plain.keys() and ({"epoch", "state_dict"} <= ours.keys() or "queue" in ours)


def test_official_release_layouts_load_by_default(tmp_path):
    from selfsup.core.checkpoint import load_file
    from selfsup.models.encoders import load_backbone

    moco = moco_v2_checkpoint("resnet18")
    # The 2020 MoCo release predates torch 1.6's zip format: write both formats.
    torch.save(moco, tmp_path / "moco_zip.pth.tar")
    torch.save(moco, tmp_path / "moco_legacy.pth.tar", _use_new_zipfile_serialization=False)
    for name in ("moco_zip.pth.tar", "moco_legacy.pth.tar"):
        model = load_backbone("resnet18", str(tmp_path / name), small_images=False)
        expected = moco["state_dict"]["module.encoder_q.layer4.1.bn2.running_var"]
        assert torch.equal(model.state_dict()["layer4.1.bn2.running_var"], expected)
    swav = swav_release_state("resnet18", hidden=64, prototypes=10)
    torch.save(swav, tmp_path / "swav.pth.tar")
    assert "module.prototypes.weight" in load_file(str(tmp_path / "swav.pth.tar"))
    # Official SwAV training checkpoint (main_swav.py save_dict), with apex's
    # amp.state_dict(): loss scalers as dicts of numbers.
    amp = collections.OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": 7})
    torch.save(
        {"epoch": 5, "state_dict": swav, "optimizer": {"state": {}, "param_groups": []}, "amp": amp},
        tmp_path / "checkpoint.pth.tar",
    )
    assert load_file(str(tmp_path / "checkpoint.pth.tar"))["amp"] == amp
    # A DINO-style training checkpoint keeps its flags as an argparse.Namespace.
    torch.save(
        {"epoch": 3, "student": {"w": torch.ones(2)}, "args": argparse.Namespace(arch="resnet18", lr=0.1)},
        tmp_path / "dino.pth",
    )
    assert load_file(str(tmp_path / "dino.pth"))["args"].lr == 0.1


def test_unsafe_load_loads_a_trusted_file_with_an_unlisted_type(tmp_path, monkeypatch):
    ckpt = moco_v2_checkpoint("resnet18", hidden=16, queue=8)
    ckpt["note"] = fractions.Fraction(1, 3)  # harmless, but not on the allow-list
    path = tmp_path / "trusted.pth.tar"
    torch.save(ckpt, path)
    monkeypatch.delenv("SELFSUP_UNSAFE_LOAD", raising=False)
    cmd = f"python3 detection/convert-pretrain-to-detectron2.py {path} {tmp_path}/o.pkl"
    refused = run(cmd)
    assert refused.returncode != 0 and not (tmp_path / "o.pkl").exists()
    last = refused.stdout.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fractions.Fraction" in last and "--unsafe-load" in last, refused.stdout
    loaded = run(cmd + " --unsafe-load")
    assert loaded.returncode == 0 and (tmp_path / "o.pkl").exists(), loaded.stdout
    # In-process, parsing the flag sets the policy that load_file follows.
    from selfsup.cli import flags as cli
    from selfsup.core.checkpoint import load_file

    args = cli.common_parser("x", lr=0.1, epochs=1, schedule=(), wd=0.0).parse_args(["--unsafe-load"])
    assert args.unsafe_load and load_file(str(path))["note"] == fractions.Fraction(1, 3)


# -- CIFAR: torchvision's md5 check comes before any unpickling ------------------


def test_cifar_refuses_a_planted_file_before_unpickling_it(tmp_path, monkeypatch):
    from selfsup.core.errors import UserError
    from selfsup.data.cifar import CIFAR

    monkeypatch.delenv("SELFSUP_UNSAFE_LOAD", raising=False)
    _, _, folder = write_cifar(str(tmp_path), "cifar10")
    folder = tmp_path / folder
    pretend_official_cifar(monkeypatch, str(folder), "cifar10")  # the fakes stand for the authors' files
    assert len(CIFAR(str(tmp_path), "cifar10", train=True)) == 20
    marker = tmp_path / "MARKER"
    for planted in ("data_batch_1", "batches.meta"):
        genuine = (folder / planted).read_bytes()
        raw_payload(folder / planted, str(marker))
        with pytest.raises(
            UserError,
            match=rf"CIFAR file '{re.escape(str(folder / planted))}' is not the "
            r"official CIFAR-10 file .*--unsafe-load",
        ):
            CIFAR(str(tmp_path), "cifar10", train=True)
        assert not marker.exists(), planted
        # torchvision itself refuses it unread: its md5 check runs before its
        # pickle.load (the reason its plain unpickling is safe here).
        with pytest.raises(RuntimeError, match="corrupted"):
            torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)
        assert not marker.exists(), planted
        (folder / planted).write_bytes(genuine)
