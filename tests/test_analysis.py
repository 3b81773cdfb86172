"""Tests of the analysis tools: MI by binning, t-SNE panels, embedding files,
training curves and the draw / cal_mi / curves commands. CPU, tiny arrays."""

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import conftest
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from selfsup.analysis import bi, curves, embeddings, tsne  # noqa: E402
from selfsup.analysis.mutual_info import (  # noqa: E402
    bin_edges,
    conditional_entropy,
    discretise,
    entropy,
    mi_by_binning,
    softmax,
)
from selfsup.core.errors import UserError  # noqa: E402

REPO = Path(conftest.REPO)  # a worker's own copy under pytest-xdist
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    """One OpenMP/BLAS thread: t-SNE on tiny arrays is several times faster so,
    and far faster on a busy machine, where threads only wait on each other."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _is_png(path, min_bytes=2000):
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) >= min_bytes


def _labels(n=300, k=4, seed=0):
    # unbalanced classes, so H(Y) is not simply log2 k
    rng = np.random.default_rng(seed)
    return rng.choice(k, size=n, p=np.linspace(1, 2, k) / np.linspace(1, 2, k).sum())


def _clustered(labels, dim=16, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, dim)) * 4
    return (centres[labels] + rng.normal(size=(len(labels), dim)) * spread).astype(np.float32)


def _script(path):
    """Import a script file as a module, to call its main() in-process (fast)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem + "_under_test", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, *args, cwd=REPO):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- mutual information


def test_entropy_and_conditional_entropy_in_bits():
    assert entropy([0, 0, 1, 1]) == pytest.approx(1.0)
    assert entropy([3, 3, 3]) == 0.0
    assert entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    # ids fully determined by `given` -> no entropy left
    assert conditional_entropy([5, 5, 7, 7], [0, 0, 1, 1]) == pytest.approx(0.0)
    # ids independent of `given`: H(ids | given) = H(ids) = 1 bit
    assert conditional_entropy([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize("norm", ["softmax", "l2", "none"])
def test_mi_of_representation_copying_the_label_is_H_Y(norm):
    y = _labels()
    p = np.bincount(y) / len(y)
    h_y = float(-(p * np.log2(p)).sum())
    t = np.eye(4)[y] * 5.0  # one-hot copy of the label
    r = mi_by_binning(t, y, n_bins=30, norm=norm)
    assert r["H_Y"] == pytest.approx(h_y)
    assert r["I_TY"] == pytest.approx(h_y)
    assert r["I_XT"] == pytest.approx(h_y)  # T has exactly the label's information
    assert r["n_distinct"] == 4


def test_mi_of_label_column_is_H_Y():
    y = _labels(seed=3)
    r = mi_by_binning(y[:, None].astype(float), y, n_bins=8, norm="none")
    assert r["I_TY"] == pytest.approx(r["H_Y"])


def test_mi_of_constant_representation_is_zero():
    y = _labels()
    r = mi_by_binning(np.full((len(y), 7), 0.25), y, n_bins=30)
    assert r["I_XT"] == 0.0
    assert r["I_TY"] == 0.0
    assert r["n_distinct"] == 1


def test_mi_of_label_independent_noise_is_small_with_coarse_bins():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=4000)
    r = mi_by_binning(rng.normal(size=(4000, 1)), y, n_bins=4, norm="none")
    assert r["I_TY"] < 0.02
    assert r["I_XT"] > 1.0  # the noise itself carries information about X


def test_mi_bounds_hold_for_random_embeddings():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, size=200)
    for bins in (2, 8, 64):
        r = mi_by_binning(rng.normal(size=(200, 32)), y, n_bins=bins)
        assert 0.0 <= r["I_TY"] <= r["H_Y"] + 1e-9
        assert r["I_TY"] <= r["I_XT"] + 1e-9
        assert r["I_XT"] <= math.log2(200) + 1e-9


def test_mi_more_bins_never_lose_information_on_nested_edges():
    y = _labels()
    t = _clustered(y, spread=2.0)
    coarse = mi_by_binning(t, y, n_bins=4)["I_XT"]
    fine = mi_by_binning(t, y, n_bins=16)["I_XT"]  # 16-bin edges refine the 4-bin ones
    assert fine >= coarse


def test_mi_rejects_length_mismatch():
    with pytest.raises(UserError, match="rows but labels have"):
        mi_by_binning(np.zeros((10, 3)), np.zeros(9, dtype=int))


def test_non_finite_representations_are_refused():
    t = np.zeros((4, 3))
    t[1, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        mi_by_binning(t, np.arange(4))
    with pytest.raises(UserError, match="NaN"):
        tsne.tsne_2d(t)


def test_symbols_groups_equal_rows_also_for_negative_and_large_codes():
    from selfsup.analysis.mutual_info import symbols

    codes = np.array([[-1, 300], [-1, 300], [255, 0], [-1, 44]])
    ids = symbols(codes)
    assert ids[0] == ids[1] and len(set(ids.tolist())) == 3


def test_discretise_puts_extremes_in_end_bins():
    edges = bin_edges(np.array([0.0, 1.0]), 4)
    codes = discretise(np.array([-5.0, 0.0, 0.24, 0.26, 1.0, 7.0]), edges)
    assert codes.tolist() == [0, 0, 0, 1, 3, 3]
    assert softmax(np.array([[1.0, 1.0]])).tolist() == [[0.5, 0.5]]


def test_bi_table_and_plot(tmp_path):
    y = _labels(n=120)
    models = [("copy", np.eye(4)[y], y), ("const", np.zeros((120, 4)), y)]
    rows = bi.analyse(models, [2, 8])
    assert len(rows) == 4
    table = bi.markdown_table(rows, bins=8)
    assert table.count("\n") == 4 and "| copy | 8 |" in table
    bi.write_csv(rows, tmp_path / "bi.csv")
    assert len((tmp_path / "bi.csv").read_text().splitlines()) == 5
    bi.plot(rows, tmp_path / "bi.png", bins=8)
    assert _is_png(tmp_path / "bi.png")


# ---------------------------------------------------------------- t-SNE


def test_select_classes_is_seeded_and_balanced():
    y = np.repeat(np.arange(12), 20)
    a = tsne.select_classes(y, num_classes=10, per_class=5, seed=3)
    b = tsne.select_classes(y, num_classes=10, per_class=5, seed=3)
    c = tsne.select_classes(y, num_classes=10, per_class=5, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a], minlength=12).tolist() == [5] * 10 + [0, 0]
    chosen = tsne.select_classes(y, classes=[11, 2], per_class=50)
    assert sorted(set(y[chosen].tolist())) == [2, 11] and len(chosen) == 40
    with pytest.raises(UserError, match="do not occur"):
        tsne.select_classes(y, classes=[99])


def test_tsne_is_deterministic_with_seed():
    y = np.repeat(np.arange(3), 12)
    x = _clustered(y, dim=8)
    a = tsne.tsne_2d(x, seed=0)
    b = tsne.tsne_2d(x, seed=0)
    assert a.shape == (36, 2)
    assert np.allclose(a, b)


def test_draw_panels_writes_png(tmp_path):
    y = np.repeat(np.arange(3), 10)
    xy = np.random.default_rng(0).normal(size=(30, 2))
    out = tsne.draw_panels([("a", xy, y), ("b", xy * 2, y)], tmp_path / "t.png", class_names=["cat", "dog", "fish"])
    assert _is_png(out)


# ---------------------------------------------------------------- embedding files


def test_embedding_files_round_trip(tmp_path):
    y = np.arange(6) % 3
    embeddings.save(tmp_path, "m1", np.ones((6, 4)), y, class_names=["a", "b", "c"])
    embeddings.save(tmp_path, "m0", np.zeros((6, 4)), y)
    np.save(tmp_path / "orphan_embed.npy", np.zeros((2, 2)))  # no labels: not listed
    assert embeddings.names_in(tmp_path) == ["m0", "m1"]
    e, lab = embeddings.load(tmp_path, "m1")
    assert e.dtype == np.float32 and e.shape == (6, 4) and lab.tolist() == y.tolist()
    assert embeddings.class_names(tmp_path) == ["a", "b", "c"]


def test_embedding_length_mismatch_is_a_clear_error(tmp_path):
    np.save(tmp_path / "bad_embed.npy", np.zeros((5, 3), dtype=np.float32))
    np.save(tmp_path / "bad_labels.npy", np.zeros(4, dtype=np.int64))
    with pytest.raises(UserError, match="5 rows but .*4 labels"):
        embeddings.load(tmp_path, "bad")
    with pytest.raises(UserError, match="no such file"):
        embeddings.load(tmp_path, "missing")


def _write_demo_embeddings(folder, n_classes=10, per_class=12):
    y = np.repeat(np.arange(n_classes), per_class)
    for i, name in enumerate(["teacher", "student_moco", "student_disco"]):
        embeddings.save(
            folder,
            name,
            _clustered(y, dim=24, spread=0.5 + i, seed=i),
            y,
            class_names=[f"c{k}" for k in range(n_classes)],
        )


def test_draw_command_runs_on_embeddings(tmp_path):
    _write_demo_embeddings(tmp_path)
    out = tmp_path / "pics" / "tsne.png"
    res = _run(
        "DisCo/draw.py",
        "--embed-dir",
        tmp_path,
        "--names",
        "teacher",
        "student_moco",
        "student_disco",
        "--per-class",
        8,
        "--out",
        out,
        "--per-model",
        cwd=REPO / "DisCo",
    )
    assert res.returncode == 0, res.stderr
    assert _is_png(out, min_bytes=10000)
    assert _is_png(tmp_path / "pics" / "tsne_teacher.png")


def test_draw_command_reports_mismatch_in_one_line(tmp_path):
    np.save(tmp_path / "m_embed.npy", np.zeros((5, 3), dtype=np.float32))
    np.save(tmp_path / "m_labels.npy", np.zeros(6, dtype=np.int64))
    res = _run("DisCo/draw.py", "--embed-dir", tmp_path, "--out", tmp_path / "x.png")
    assert res.returncode == 2
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) == 1
    assert "m_embed.npy" in res.stderr and not (tmp_path / "x.png").exists()


def test_draw_command_without_embeddings_says_what_to_do(tmp_path):
    res = _run("DisCo/draw.py", "--embed-dir", tmp_path / "none")
    assert res.returncode == 2 and "export" in res.stderr


def test_cal_mi_command_writes_table_and_plot(tmp_path):
    _write_demo_embeddings(tmp_path, n_classes=4)
    res = _run("data/cal_mi.py", "--embed-dir", tmp_path, "--out-dir", tmp_path / "bi", "--sweep", 2, 8, "--bins", 4)
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "bi" / "bi.csv").read_text().splitlines()) == 1 + 3 * 3
    assert (tmp_path / "bi" / "bi.md").read_text().count("| 4 |") == 3
    assert _is_png(tmp_path / "bi" / "bi.png")


# ---------------------------------------------------------------- training curves


def _write_metrics(path, rows, header):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_read_metrics_handles_missing_cells(tmp_path):
    _write_metrics(
        tmp_path / "run" / "metrics.csv",
        [(0, 0.1, 5.0, "", 3.0), (1, 0.05, 4.0, 12.5, 2.9)],
        "epoch,lr,loss,acc1,epoch_time",
    )
    cols = curves.read_metrics(tmp_path / "run")
    assert cols["loss"].tolist() == [5.0, 4.0]
    assert math.isnan(cols["acc1"][0]) and cols["acc1"][1] == 12.5
    assert curves.default_columns([cols]) == ["loss", "lr", "acc1"]


def test_read_metrics_errors(tmp_path):
    with pytest.raises(UserError, match="no metrics file"):
        curves.read_metrics(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,loss\n")
    with pytest.raises(UserError, match="no epochs"):
        curves.read_metrics(tmp_path)


def test_curves_command_writes_png(tmp_path):
    _write_metrics(
        tmp_path / "pre" / "ckpt" / "metrics.csv",
        [(e, 0.03 * (1 - e / 5), 9 - e, 8 - e, 0.5 / (e + 1)) for e in range(5)],
        "epoch,lr,loss,loss_nce,loss_mse",
    )
    _write_metrics(
        tmp_path / "lin" / "metrics.csv",
        [(e, 3.0, 2 - 0.1 * e, 20 + e, 50 + e) for e in range(4)],
        "epoch,lr,loss,acc1,acc5",
    )
    out = tmp_path / "c.png"
    curves.main([str(tmp_path / "pre" / "ckpt"), str(tmp_path / "lin"), "--out", str(out)])
    assert _is_png(out, min_bytes=10000)
    with pytest.raises(SystemExit) as exc:
        curves.main([str(tmp_path / "lin"), "--columns", "nope", "--out", str(out)])
    assert exc.value.code == 2


# ---------------------------------------------------------------- export from a checkpoint


def _tiny_image_folder(root, n_classes=3, per_class=4, size=36):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(n_classes):
        folder = root / "val" / f"class{c}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 255, size=3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


def _pretraining_checkpoint(path, arch="resnet18"):
    """A freshly initialised MoCo-v2 model saved as the pretraining script saves it."""
    from types import SimpleNamespace

    import torch

    from selfsup.core import checkpoint as ck
    from selfsup.core.checkpoint import prefixed_state
    from selfsup.methods.moco import build_moco

    torch.manual_seed(0)
    args = SimpleNamespace(
        arch=arch, small_images=True, moco_dim=16, mlp=True, hidden=-1, moco_k=8, moco_m=0.99, moco_t=0.2, bn_splits=1
    )
    ck.save_checkpoint(
        {
            "epoch": 1,
            "arch": arch,
            "state_dict": prefixed_state(build_moco(args)),
            "small_images": True,
            "image_size": 32,
        },
        str(path),
    )
    return path


def test_export_then_draw_from_a_pretraining_checkpoint(tmp_path, torch_one_thread):
    data = _tiny_image_folder(tmp_path / "data")
    ckpt = _pretraining_checkpoint(tmp_path / "checkpoint_0000.pth.tar")
    emb = tmp_path / "emb"
    export = _script("DisCo/export_embed.py")
    for name in ("teacher", "student"):
        export.main(
            ["-a", "resnet18", "--pretrained", str(ckpt), "--name", name, "--out", str(emb), "-j", "0", str(data)]
        )
    e, y = embeddings.load(emb, "teacher")
    assert e.shape == (12, 512) and np.bincount(y).tolist() == [4, 4, 4]
    assert np.isfinite(e).all() and e.std() > 0
    assert embeddings.class_names(emb) == ["class0", "class1", "class2"]
    _script("DisCo/draw.py").main(["--embed-dir", str(emb), "--out", str(tmp_path / "tsne.png")])
    assert _is_png(tmp_path / "tsne.png", min_bytes=10000)


def test_export_refuses_a_checkpoint_of_another_arch(tmp_path, capsys, torch_one_thread):
    data = _tiny_image_folder(tmp_path / "data", n_classes=2, per_class=1)
    ckpt = _pretraining_checkpoint(tmp_path / "ck.pth.tar")
    with pytest.raises(SystemExit) as exc:
        _script("DisCo/export_embed.py").main(
            ["-a", "resnet34", "--pretrained", str(ckpt), "--out", str(tmp_path / "e"), "-j", "0", str(data)]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error:") and "resnet18" in err and "resnet34" in err
    assert not (tmp_path / "e").exists()
