"""A run's metrics.csv (selfsup.engine.progress.MetricsWriter): a file that
is not the table a run writes is one line naming it, before the run trains;
one with another kind of run's columns is refused at the first row, never
mixed; the file is written whole (selfsup.core.files.atomic_write)."""

import csv
import os

import pytest
from conftest import TINY_LINCLS, TINY_PRETRAIN, run

from selfsup.core.errors import UserError
from selfsup.engine import progress
from selfsup.engine.progress import MetricsWriter

MOCO_HEADER = "epoch,lr,loss,acc1,acc5,epoch_time\n"
EXPECTED = (
    "expected a CSV table whose first column is 'epoch', one row per epoch (as the training scripts write it): "
    "move it away (checkpoints do not need it) and rerun"
)


def refused(folder, content, start_epoch=1):
    """MetricsWriter on a folder whose metrics.csv holds `content`: the
    UserError's text; the file is left as it was."""
    path = folder / "metrics.csv"
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        MetricsWriter(str(folder), start_epoch)
    assert path.read_bytes() == content
    return str(exc.value)


@pytest.mark.parametrize(
    "content, what",
    [
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "it is not a CSV text file ("),
        (b"epoch,loss\n0,1.0\x00\n", "it is not a CSV text file (it holds NUL bytes)"),
        (
            b"loss,epoch\n1.0,0\n",
            "its header 'loss,epoch' is not a metrics header (unique column names, 'epoch' first)",
        ),
        (b"epoch,loss,loss\n0,1,1\n", "its header 'epoch,loss,loss' is not a metrics header"),
        (b"epoch,loss\n0,1.0\n1,0.9,7\n", "line 3 has 3 cells where the header has 2"),
        (b"epoch,loss\n0\n", "line 2 has 1 cells where the header has 2"),
        (b"epoch,loss\nzero,1.0\n", "line 2: epoch 'zero' is not an integer >= 0"),
        (b"epoch,loss\n-1,1.0\n", "line 2: epoch '-1' is not an integer >= 0"),
        (b"epoch,loss\n0,1.0\n1,0.9\n0,1.1\n", "line 4: epoch 0 does not follow epoch 1 (rows of two runs?)"),
        (b"epoch,loss\n\n0,1.0\n\n1,x,y\n", "line 5 has 3 cells where the header has 2"),  # lines of the file
    ],
)
def test_a_malformed_metrics_file_is_one_line_naming_it(tmp_path, content, what):
    text = refused(tmp_path, content)
    assert text.startswith(f"metrics file '{tmp_path / 'metrics.csv'}': {what}")
    assert text.endswith(EXPECTED) and "\n" not in text


def test_another_kind_of_runs_columns_are_refused_at_the_first_row(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(MOCO_HEADER + "0,0.03,6.1,10,50,1.5\n")
    w = MetricsWriter(str(tmp_path), start_epoch=1)
    before = path.read_bytes()
    with pytest.raises(UserError) as exc:
        w.write(1, lr=0.1, loss=2.0, train_acc1=30.0, val_loss=2.1, acc1=31.0, acc5=80.0, best_acc1=31.0)
    assert str(exc.value) == (
        f"metrics file '{path}' has the columns of another kind of run (epoch, lr, loss, acc1, acc5, epoch_time); "
        "this run writes epoch, lr, loss, train_acc1, val_loss, acc1, acc5, best_acc1: give this run a folder "
        "of its own, or move the file away to start a new one"
    )
    assert path.read_bytes() == before
    # Also when the run redoes every row (start_epoch 0): the other run's rows are not dropped for ours.
    w = MetricsWriter(str(tmp_path), start_epoch=0)
    with pytest.raises(UserError, match="columns of another kind of run"):
        w.write(0, loss=2.0, acc1=1.0)
    assert path.read_bytes() == before


def test_a_run_of_the_same_kind_continues_its_file(tmp_path, capsys):
    w = MetricsWriter(str(tmp_path))
    for epoch in range(3):
        w.write(epoch, lr=0.1, loss=float(epoch))
    w = MetricsWriter(str(tmp_path), start_epoch=2)  # columns in another order: the same run
    w.write(2, loss=9.0, lr=0.1)
    w.write(3, loss=8.0, lr=0.1)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["loss"]) for r in rows] == [("0", "0"), ("1", "1"), ("2", "9"), ("3", "8")]
    assert "redoing 1 from epoch 2" in capsys.readouterr().out


def test_an_empty_file_and_blank_lines_are_no_rows(tmp_path):
    (tmp_path / "metrics.csv").write_text("")
    MetricsWriter(str(tmp_path)).write(0, loss=1.0)
    (tmp_path / "metrics.csv").write_text("epoch,loss\n0,1\n\n1,0.5\n\n")
    w = MetricsWriter(str(tmp_path), start_epoch=2)
    assert [r["epoch"] for r in w.rows] == ["0", "1"]


def test_the_file_is_written_whole_or_left_as_it_was(tmp_path, monkeypatch):
    w = MetricsWriter(str(tmp_path))
    w.write(0, loss=1.0)
    before = (tmp_path / "metrics.csv").read_bytes()

    def broken(self, rows):
        self.writerow(rows[0])
        raise OSError("the writer broke after the first row")

    monkeypatch.setattr(progress.csv.DictWriter, "writerows", broken)
    with pytest.raises(OSError, match="broke"):
        w.write(1, loss=0.5)
    assert (tmp_path / "metrics.csv").read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.csv"] or set(os.listdir(tmp_path)) == {"metrics.csv", "tb"}


def test_a_pretraining_rerun_on_a_garbled_metrics_file_stops_before_training(tiny_data, tmp_path):
    ckpt = tmp_path / "moco"
    first = run(f"python3 main_moco.py -a resnet18 {TINY_PRETRAIN} --ckpt-dir {ckpt} {tiny_data}", cwd="moco")
    assert first.returncode == 0, first.stdout[-2000:]
    (ckpt / "metrics.csv").write_bytes(b"\x00\x01garbage\xff")
    again = run(
        f"python3 main_moco.py -a resnet18 {TINY_PRETRAIN} --epochs 2 --resume {ckpt}/checkpoint_0000.pth.tar "
        f"--ckpt-dir {ckpt} {tiny_data}",
        cwd="moco",
    )
    assert again.returncode == 2, again.stdout[-2000:]
    errors = [line for line in again.stdout.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: metrics file '{ckpt / 'metrics.csv'}': it is not a CSV text file ('utf-8' codec can't decode byte "
        f"0xff in position 9: invalid start byte); {EXPECTED}"
    ]
    assert "Epoch: [1]" not in again.stdout and "Traceback" not in again.stdout
    assert (ckpt / "metrics.csv").read_bytes() == b"\x00\x01garbage\xff"


def test_a_linear_evaluation_never_adds_its_rows_to_a_pretraining_runs_file(tiny_data, tmp_path):
    moco, lin = tmp_path / "moco", tmp_path / "lin"
    steps = [
        f"python3 main_moco.py -a resnet18 {TINY_PRETRAIN} --ckpt-dir {moco} {tiny_data}",
        f"python3 main_lincls.py -a resnet18 {TINY_LINCLS} --ckpt-dir {lin} {tiny_data}",
    ]
    for cmd in steps:
        r = run(cmd, cwd="moco")
        assert r.returncode == 0, r.stdout[-2000:]
    # The evaluation's folder now holds the MoCo run's metrics (copied there by hand, or by an old version).
    (lin / "metrics.csv").write_bytes((moco / "metrics.csv").read_bytes())
    r = run(
        f"python3 main_lincls.py -a resnet18 {TINY_LINCLS} --epochs 2 --resume {lin}/checkpoint.pth.tar "
        f"--ckpt-dir {lin} {tiny_data}",
        cwd="moco",
    )
    assert r.returncode == 2, r.stdout[-2000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: metrics file '{lin / 'metrics.csv'}' has the columns")
    assert "this run writes epoch, lr, loss, train_acc1, val_loss, acc1, acc5, best_acc1" in errors[0]
    assert (lin / "metrics.csv").read_bytes() == (moco / "metrics.csv").read_bytes()
