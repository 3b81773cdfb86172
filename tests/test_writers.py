"""Writers never destroy what the user made: the temporary sweep removes only
partial files this project wrote; a writer whose output is its input
refuses; names given by the user stay inside the output folder; every
whole-file writer (embeddings, pictures, tables) is atomic under a full
disk; no checkpoint with NaN or inf tensors is written."""

import hashlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from selfsup.analysis import embeddings
from selfsup.core import checkpoint as ck
from selfsup.core import files
from selfsup.core.errors import UserError
from selfsup.detection.convert import convert_file
from selfsup.models.backbones import create_backbone

_SCRIPTS = {}


def script(path):
    """A script of the repository imported as a module (its folder is not a package)."""
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(
            "writers_" + path.replace("/", "_")[:-3], os.path.join(REPO, path)
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def one_error(capsys, main, argv):
    """main(argv) stops with status 2 and exactly one line, `error: ...`."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# -- the temporary sweep ------------------------------------------------------------------


def test_the_sweep_removes_only_partial_files_of_dead_writers(tmp_path):
    dead = dead_pid()
    ours_dead = files.partial_path(str(tmp_path / "checkpoint_0001.pth.tar"), dead)
    ours_live = files.partial_path(str(tmp_path / "checkpoint_0002.pth.tar"), os.getppid())
    keep = [
        f"checkpoint_0000.pth.tar.tmp{dead}",  # the old pattern: a user's file may look like it
        f"notes.tmp{dead}",
        f".x.selfsup-partial.tmp{dead}.bak",  # the pattern, but not the whole name
        f"x.selfsup-partial.tmp{dead}",  # not hidden
    ]
    for name in keep:
        (tmp_path / name).write_text("user")
    for path in (ours_dead, ours_live):
        open(path, "wb").close()
    target = tmp_path / "target.txt"
    target.write_text("user")
    link = files.partial_path(str(tmp_path / "link"), dead)
    os.symlink(target, link)  # our name, but a link: never followed or removed
    folder = files.partial_path(str(tmp_path / "dir"), dead)
    os.mkdir(folder)
    ck.remove_stale_temporaries(str(tmp_path))
    left = set(os.listdir(tmp_path))
    assert os.path.basename(ours_dead) not in left
    assert left >= set(keep) | {os.path.basename(p) for p in (ours_live, link, folder)}
    assert all((tmp_path / n).read_text() == "user" for n in keep) and target.read_text() == "user"


# -- outputs that are inputs ------------------------------------------------------------


@pytest.fixture
def a_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module.encoder_q.conv1.weight": torch.zeros(4, 3, 7, 7)}}, path)
    return path


def test_converter_refuses_to_write_over_its_input(a_checkpoint):
    before = digest(a_checkpoint)
    r = subprocess.run(
        [sys.executable, "detection/convert-pretrain-to-detectron2.py", str(a_checkpoint), str(a_checkpoint)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr == (
        f"error: output '{a_checkpoint}' is the input checkpoint '{a_checkpoint}' (the same file): "
        "give the output another name; nothing was written\n"
    )
    assert digest(a_checkpoint) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotted"])
def test_converter_refuses_its_input_through_a_link(a_checkpoint, link):
    out = a_checkpoint.parent / "out.pkl"
    if link == "symlink":
        out.symlink_to(a_checkpoint)
    elif link == "hardlink":
        os.link(a_checkpoint, out)
    else:
        out = a_checkpoint.parent / "." / ".." / a_checkpoint.parent.name / a_checkpoint.name
    before = digest(a_checkpoint)
    with pytest.raises(UserError, match=r"is the input checkpoint .* \(the same file\)"):
        convert_file(str(a_checkpoint), str(out))
    assert digest(a_checkpoint) == before


EXPORT = "DisCo/export_embed.py"


@pytest.mark.parametrize(
    "name, needle",
    [
        ("../../x", "expected a plain file name"),
        ("sub/x", "expected a plain file name"),
        ("..", "expected a plain file name"),
        ("", "expected a plain file name"),
    ],
)
def test_export_names_cannot_leave_the_output_folder(capsys, tmp_path, name, needle):
    out = tmp_path / "a" / "b" / "out"
    line = one_error(
        capsys, script(EXPORT).main, ["--pretrained", str(tmp_path / "x.pth"), "--out", str(out), "--name", name]
    )
    assert line.startswith(f"error: --name {name!r}: ") and needle in line and str(out) in line
    assert not any(p.name.endswith(".npy") for p in tmp_path.rglob("*"))  # nothing written anywhere


def test_export_name_whose_file_links_out_of_the_folder_is_refused(capsys, tmp_path):
    out, outside = tmp_path / "out", tmp_path / "elsewhere.npy"
    out.mkdir()
    outside.write_bytes(b"user")
    (out / "x_embed.npy").symlink_to(outside)
    line = one_error(capsys, script(EXPORT).main, ["--pretrained", "p.pth", "--out", str(out), "--name", "x"])
    assert line == f"error: --name 'x': '{out / 'x_embed.npy'}' leads out of '{out}'"
    assert outside.read_bytes() == b"user"


def test_export_refuses_to_write_over_its_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "m_labels.npy"  # a checkpoint given a name the export writes
    ckpt.write_bytes(b"weights")
    line = one_error(capsys, script(EXPORT).main, ["--pretrained", str(ckpt), "--out", str(tmp_path), "--name", "m"])
    assert line.startswith(f"error: output '{ckpt}' is the --pretrained checkpoint '{ckpt}' (the same file)")
    assert ckpt.read_bytes() == b"weights"


@pytest.fixture
def embed_dir(tmp_path):
    folder = tmp_path / "emb"
    embeddings.save(folder, "m", np.ones((4, 3)), np.arange(4), class_names=list("abcd"))
    return folder


def test_draw_refuses_an_out_that_is_one_of_its_inputs(capsys, embed_dir):
    target = embed_dir / "m_embed.npy"
    before = digest(target)
    line = one_error(capsys, script("DisCo/draw.py").main, ["--embed-dir", str(embed_dir), "--out", str(target)])
    assert line == f"error: --out '{target}' is an input of --names m '{target}' (the same file): " + (
        "give the output another name; nothing was written"
    )
    assert digest(target) == before


def test_draw_per_model_names_cannot_leave_the_folder(capsys, embed_dir, tmp_path):
    out = tmp_path / "pics" / "t.png"
    line = one_error(
        capsys,
        script("DisCo/draw.py").main,
        ["--embed-dir", str(embed_dir), "--names", "../m", "--per-model", "--out", str(out)],
    )
    assert line.startswith("error: --names (in a --per-model file name) 't_../m': expected a plain file name")
    assert not (tmp_path / "pics").exists()


def test_curves_refuse_an_out_that_is_a_metrics_file(capsys, tmp_path):
    from selfsup.analysis import curves

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,loss\n0,1.0\n")
    line = one_error(capsys, curves.main, [str(tmp_path), "--out", str(metrics)])
    assert line.startswith(f"error: --out '{metrics}' is the metrics file '{metrics}' (the same file)")
    assert metrics.read_text() == "epoch,loss\n0,1.0\n"


# -- every whole-file writer is atomic under a full disk --------------------------------------

LIMITED = """
import json, resource, signal, sys
import numpy as np
from selfsup.analysis import curves, embeddings, tsne
from selfsup.core.errors import UserError
folder = sys.argv[1]
embeddings.save(folder, "m", np.zeros((2, 2)), np.arange(2))
tsne.draw_panels([("m", np.zeros((2, 2)), np.arange(2))], folder + "/t.png")
curves.plot_curves([{"epoch": np.arange(3.0), "loss": np.ones(3)}], folder + "/c.png")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
out = {}
for what, write in [
    ("embed", lambda: embeddings.save(folder, "m", np.zeros((2000, 8)), np.arange(2000))),
    ("tsne", lambda: tsne.draw_panels([("m", np.random.rand(400, 2), np.arange(400) % 10)], folder + "/t.png")),
    ("curves", lambda: curves.plot_curves([{"epoch": np.arange(50.0), "loss": np.random.rand(50)}], folder + "/c.png")),
]:
    try:
        write()
        out[what] = "written"
    except UserError as exc:
        out[what] = str(exc)
print(json.dumps(out))
"""


def test_embeddings_and_pictures_past_the_file_size_limit_keep_the_old_files(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", LIMITED, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO, MPLBACKEND="Agg"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    before = {n: digest(tmp_path / n) for n in ("m_embed.npy", "m_labels.npy", "t.png", "c.png")}
    import json

    out = json.loads(r.stdout.splitlines()[-1])
    for what, name in (("embed", "m_embed.npy"), ("tsne", "t.png"), ("curves", "c.png")):
        assert out[what].startswith(f"the file size limit is reached (File too large) writing '{tmp_path}/{name}'")
        assert f"in '{tmp_path}': no partial file is left and '{tmp_path}/{name}', the last good" in out[what]
    assert np.load(tmp_path / "m_embed.npy").shape == (2, 2) and np.load(tmp_path / "m_labels.npy").shape == (2,)
    assert before == {n: digest(tmp_path / n) for n in before}  # read back after the child: unchanged
    assert sorted(os.listdir(tmp_path)) == ["c.png", "m_embed.npy", "m_labels.npy", "t.png"]


def test_the_embedding_library_refuses_a_name_with_a_path(tmp_path):
    with pytest.raises(UserError, match=r"^name '\.\./x': expected a plain file name"):
        embeddings.save(tmp_path / "e", "../x", np.zeros((1, 1)), np.zeros(1))
    assert list(tmp_path.rglob("*.npy")) == []


# -- no checkpoint with non-finite tensors ----------------------------------------------------------


def _state(model, opt):
    return {"epoch": 1, "arch": "x", "state_dict": ck.prefixed_state(model), "optimizer": opt.state_dict()}


def test_no_checkpoint_with_non_finite_weights_or_optimizer_state_is_written(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    good = str(tmp_path / "checkpoint_0000.pth.tar")
    ck.save_checkpoint(_state(model, opt), good)
    before = digest(good)

    with torch.no_grad():
        model[1].running_var[1] = float("inf")
    with pytest.raises(UserError) as err:
        ck.save_checkpoint(_state(model, opt), str(tmp_path / "checkpoint_0001.pth.tar"))
    assert str(err.value) == (
        f"not writing checkpoint '{tmp_path / 'checkpoint_0001.pth.tar'}': state_dict.module.1.running_var holds "
        f"NaN or inf values (the training diverged); the last checkpoint '{good}' is kept"
    )

    with torch.no_grad():
        model[1].running_var.fill_(1.0)
    opt.state[model[0].weight]["momentum_buffer"][0, 0] = float("nan")
    with pytest.raises(UserError, match=r"optimizer\.state\.0\.momentum_buffer holds NaN or inf values"):
        ck.save_checkpoint(_state(model, opt), str(tmp_path / "checkpoint_0001.pth.tar"))
    assert os.listdir(tmp_path) == ["checkpoint_0000.pth.tar"] and digest(good) == before


def test_a_diverging_linear_evaluation_writes_no_inf_mid_epoch_checkpoint(tiny_data, tmp_path):
    """A backbone whose features are large (its last BN scaled by 1e4) and
    --lr 1e38 make the head inf after the first step, with a finite loss; the
    mid-epoch save that follows refuses, in one line, and leaves no checkpoint."""
    torch.manual_seed(0)
    backbone, _ = create_backbone("resnet18", small_images=True)
    sd = backbone.state_dict()
    sd["layer4.1.bn2.weight"] = sd["layer4.1.bn2.weight"] * 1e4
    pretrained = tmp_path / "pre.pth.tar"
    torch.save(
        {
            "epoch": 1,
            "arch": "resnet18",
            "small_images": True,
            "state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()},
        },
        pretrained,
    )
    r = subprocess.run(
        [sys.executable, "moco/main_lincls.py", "-a", "resnet18", "-b", "8", "--image-size", "16", "-j", "0"]
        + ["--epochs", "1", "--lr", "1e38", "--save-freq", "1", "--pretrained", str(pretrained)]
        + ["--ckpt-dir", str(tmp_path / "lin"), tiny_data],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stdout, r.stdout[-3000:]
    assert errors[0].startswith(
        f"error: not writing checkpoint '{tmp_path / 'lin'}/checkpoint.pth.tar': state_dict.module.fc."
    )
    assert "holds NaN or inf values" in errors[0] and "no checkpoint is written" in errors[0]
    assert [n for n in os.listdir(tmp_path / "lin") if "pth" in n] == []
