"""A run's inputs are never its outputs (docs/resume.md, docs/bad-input.md):
a teacher or pretrained file that lies among the files a run moves aside,
prunes or writes in its folder is refused before anything is touched, and a
folder holding another kind of run's files is refused instead of having
its logs moved or mixed. Each case runs the script's main() in this process
(it stops before any training) and checks that no file changed."""

import os
import shutil

import pytest
import torch
from layouts import moco_v2_checkpoint
from test_bad_input import D, E, L, M, R, one_error

SMALL = ["-a", "resnet18", "-b", "4", "--moco-k", "16", "--image-size", "16", "--small-images", "-j", "0",
         "--epochs", "1"]  # fmt: skip
LIN = ["-a", "resnet18", "-b", "4", "--image-size", "16", "-j", "0", "--epochs", "1"]
SWAV_DISTILL = "swav-master/main_swav_distill.py"
SWAV_TINY = ["--arch", "resnet18", "--size_crops", "16", "--nmb_crops", "2", "--min_scale_crops", "0.14",
             "--max_scale_crops", "1", "--crops_for_assign", "0", "1", "--nmb_prototypes", "10", "--workers", "0",
             "--batch_size", "4", "--epochs", "1", "--queue_length", "0", "--teacher_arch", "resnet18"]  # fmt: skip


def snapshot(folder):
    """Every file under `folder` with its bytes: nothing may move or change."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "teacher.pth.tar"
    torch.manual_seed(0)
    torch.save(moco_v2_checkpoint("resnet18", queue=64), path)
    return path


def refused(capsys, script, argv, folder, *needles):
    before = snapshot(folder)
    line = one_error(capsys, script, argv)
    for n in needles:
        assert n in line, line
    assert snapshot(folder) == before  # nothing moved, pruned or written
    assert not os.path.exists(os.path.join(folder, "previous-1"))
    return line


@pytest.mark.parametrize("script", [D, R])
@pytest.mark.parametrize("resume", [None, ""])
def test_a_teacher_among_the_students_own_checkpoints_is_refused(
    capsys, tmp_path, tiny_data, teacher_file, script, resume
):
    # The teacher's run and the student's share ./ckpt: with --resume '' the
    # teacher used to be moved to previous-1 and the rerun distilled from the
    # student's own checkpoint of the same name.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    teacher = ckpt / "checkpoint_0199.pth.tar"
    shutil.copyfile(teacher_file, teacher)
    argv = [*SMALL, "--teacher", str(teacher), "--teacher_arch", "resnet18", "--ckpt-dir", str(ckpt)]
    argv += ["--resume", resume] if resume is not None else []
    refused(capsys, script, argv + [tiny_data], ckpt, "--teacher", str(teacher), "copy it out of that folder")


def test_a_teacher_reached_through_a_link_from_elsewhere_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copyfile(teacher_file, ckpt / "checkpoint_0010_iter000004.pth.tar")
    link = tmp_path / "my_teacher.pth.tar"
    link.symlink_to(ckpt / "checkpoint_0010_iter000004.pth.tar")
    argv = [*SMALL, "--teacher", str(link), "--teacher_arch", "resnet18", "--ckpt-dir", str(ckpt), tiny_data]
    refused(capsys, D, argv, ckpt, "--teacher", "checkpoint_0010_iter000004.pth.tar")


def test_a_teacher_kept_in_previous_n_or_under_another_name_is_left_in_place(tmp_path, teacher_file):
    from selfsup.engine import pretrain
    from selfsup.engine import runstate as rs

    ckpt = tmp_path / "ckpt"
    (ckpt / "previous-1").mkdir(parents=True)
    for name in ("previous-1/checkpoint_0199.pth.tar", "teacher_r50.pth.tar"):
        shutil.copyfile(teacher_file, ckpt / name)
        # Not a name the run moves or prunes (archive_previous_run moves top-level outputs only).
        rs.check_run_folder(
            str(ckpt), "--ckpt-dir", pretrain.is_output, pretrain.foreign_output, {"--teacher": str(ckpt / name)}, "x"
        )


def test_a_pretrained_backbone_that_is_the_evaluations_own_checkpoint_is_refused(
    capsys, tmp_path, tiny_data, teacher_file
):
    folder = tmp_path / "lin"
    folder.mkdir()
    shutil.copyfile(teacher_file, folder / "model_best.pth.tar")
    argv = [*LIN, "--pretrained", str(folder / "model_best.pth.tar"), "--ckpt-dir", str(folder), tiny_data]
    refused(capsys, L, argv, folder, "--pretrained", "model_best.pth.tar", "linear evaluation")


def test_a_linear_evaluation_in_a_pretraining_runs_folder_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    # It used to write its rows into the MoCo run's metrics.csv (and move its tb/).
    folder = tmp_path / "moco"
    folder.mkdir()
    shutil.copyfile(teacher_file, folder / "checkpoint_0199.pth.tar")
    (folder / "metrics.csv").write_text("epoch,lr,loss\n0,0.03,7.1\n")
    argv = [*LIN, "--pretrained", str(folder / "checkpoint_0199.pth.tar"), "--ckpt-dir", str(folder), tiny_data]
    refused(capsys, L, argv, folder, "holds a pretraining run's files (checkpoint_0199.pth.tar)", "a folder of its own")


def test_a_pretraining_run_in_a_linear_evaluations_folder_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    folder = tmp_path / "lin"
    folder.mkdir()
    shutil.copyfile(teacher_file, folder / "model_best.pth.tar")
    (folder / "metrics.csv").write_text("epoch,lr,loss,acc1\n0,3.0,2.2,10.0\n")
    refused(capsys, M, [*SMALL, "--ckpt-dir", str(folder), tiny_data], folder, "a linear evaluation's files")


def test_swav_distill_teacher_from_its_own_dump_path_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    dump = tmp_path / "dump"
    (dump / "checkpoints").mkdir(parents=True)
    teacher = dump / "checkpoints" / "ckp-199.pth"
    shutil.copyfile(teacher_file, teacher)
    argv = [*SWAV_TINY, "--data_path", os.path.join(tiny_data, "train"), "--pretrained", str(teacher),
            "--dump_path", str(dump)]  # fmt: skip
    refused(capsys, SWAV_DISTILL, argv, dump, "--pretrained/--teacher", "checkpoints", "SwAV run")


def test_eval_linear_in_a_swav_pretraining_folder_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    dump = tmp_path / "swav"
    (dump / "checkpoints").mkdir(parents=True)
    shutil.copyfile(teacher_file, dump / "checkpoints" / "ckp-0.pth")
    shutil.copyfile(teacher_file, dump / "checkpoint.pth.tar")
    argv = ["--arch", "resnet18", "--image_size", "16", "--workers", "0", "--epochs", "1", "--data_path", tiny_data,
            "--pretrained", str(dump / "checkpoints" / "ckp-0.pth"), "--dump_path", str(dump)]  # fmt: skip
    refused(capsys, E, argv, dump, "a SwAV pretraining run's files (checkpoints)")


def test_eval_linear_pretrained_from_its_own_checkpoint_is_refused(capsys, tmp_path, tiny_data, teacher_file):
    dump = tmp_path / "lin"
    dump.mkdir()
    shutil.copyfile(teacher_file, dump / "checkpoint.pth.tar")
    argv = ["--arch", "resnet18", "--image_size", "16", "--workers", "0", "--epochs", "1", "--data_path", tiny_data,
            "--pretrained", str(dump / "checkpoint.pth.tar"), "--dump_path", str(dump)]  # fmt: skip
    refused(capsys, E, argv, dump, "--pretrained", "checkpoint.pth.tar", "evaluation")


# -- malformed run-folder files: one line naming the file ---------------------------


def test_malformed_mid_epoch_entries_are_one_line():
    from selfsup.core.errors import UserError
    from selfsup.engine import runstate as rs
    from selfsup.engine.checkpointing import mid_epoch_state

    good = {"epoch": 0, "perm_seed": 1, "aug_seed": 2, "start": 3}
    base = {"epoch": 0, "iteration": 3}
    assert mid_epoch_state({"epoch": 1}, "p") is None  # an end-of-epoch checkpoint
    mid = mid_epoch_state({**base, "sampler": [good], "rng": [rs.capture_rng()]}, "p")
    assert mid["iteration"] == 3 and mid["sampler"] == [good]
    old = mid_epoch_state({**base, "sampler": good, "rng": [rs.capture_rng()]}, "p")  # before per-rank positions
    assert old["sampler"] == [good]
    cases = [
        ({"sampler": None, "rng": None}, "has no per-process sampler and RNG states"),
        ({"sampler": [good, good], "rng": [rs.capture_rng()]}, "has no per-process sampler"),
        ({"sampler": [{**good, "aug_seed": "x"}], "rng": [rs.capture_rng()]}, "sampler position"),
        ({"sampler": [good], "rng": [{"python": 1}]}, "the RNG state of rank 0 is malformed"),
        ({"sampler": [good], "rng": ["not a state"]}, "the RNG state of rank 0 is malformed"),
        ({"sampler": [good, good], "rng": [rs.capture_rng()] * 2}, "of a 2-process run; this run has 1"),
    ]
    state_before = rs.capture_rng()["torch"]
    for entries, needle in cases:
        with pytest.raises(UserError, match="'ckpt/x.pth.tar'") as err:
            mid_epoch_state({**base, **entries}, "ckpt/x.pth.tar")
        assert needle in str(err.value), (entries, str(err.value))
    assert torch.equal(rs.capture_rng()["torch"], state_before)  # a failed check left the generators alone


def test_swav_queue_files_of_another_shape_or_process_count_are_one_line(tmp_path):
    import argparse

    from selfsup.core.errors import UserError
    from selfsup.engine.swav_train import restore_queue

    args = argparse.Namespace(
        dump_path=str(tmp_path), rank=0, world_size=1, crops_for_assign=[0, 1], queue_length=48, feat_dim=128,
        device=torch.device("cpu"),
    )  # fmt: skip
    ok = torch.zeros(2, 48, 128)
    assert torch.equal(restore_queue(args, {"queues": [ok]}), ok)
    for ckpt, needle in [
        ({"queues": [ok, ok]}, "of a 2-process run; this run has 1"),
        ({"queues": {"0": ok}}, "not a list of per-rank queues"),
        ({"queues": [torch.zeros(2, 7, 128)]}, "is (2, 7, 128), not a queue of shape (2, 48, 128)"),
        ({"queues": [torch.full((2, 48, 128), float("nan"))]}, "holds non-finite values"),
        ({"queues": ["text"]}, "is str, not a queue"),
    ]:
        with pytest.raises(UserError) as err:
            restore_queue(args, ckpt)
        assert needle in str(err.value) and "checkpoint.pth.tar" in str(err.value), str(err.value)
    # The official layout's per-rank file.
    torch.save({"queue": torch.zeros(2, 7, 128)}, tmp_path / "queue0.pth")
    with pytest.raises(UserError, match=r"queue file '.*queue0.pth' is \(2, 7, 128\)"):
        restore_queue(args, None)
    torch.save({"other": 1}, tmp_path / "queue0.pth")
    with pytest.raises(UserError, match="holds no 'queue' tensor"):
        restore_queue(args, None)
