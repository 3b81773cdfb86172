"""tools/ and benchmarks/: every step is an argument list (a path with
spaces, quotes and non-ASCII letters reaches the scripts as it is, and the
printed line can be pasted into a shell); the inputs are checked before any
folder is touched; only folders the pipeline made are ever removed."""

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys

import demo  # tools/ is on pytest's pythonpath (pyproject.toml)
import pipeline
import pytest
import tab1_small as tab1
from conftest import SOURCE, run

WEIRD = "d a't\"a é"  # a space, both quotes, a non-ASCII letter


@pytest.fixture
def weird_data(tiny_data, tmp_path):
    """The tiny data set at a path a shell string would break on."""
    dest = tmp_path / WEIRD / "data"
    shutil.copytree(tiny_data, dest)
    return str(dest)


def one_error(capsys, main, argv, monkeypatch):
    """Run a tool's main with `argv`: exit 2 and exactly one `error:` line on stderr."""
    monkeypatch.setattr(sys, "argv", ["tool", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), (exc.value.code, err)
    return err[0]


def fake_steps(monkeypatch):
    """run_pipeline with its steps recorded instead of run: each writes
    what the pipeline reads back (a lincls metrics.csv), the kNN is 50."""
    calls = []

    def sh(cmd, cwd, log, tag=None, threads=1):
        calls.append((cmd, cwd))
        if "--ckpt-dir" in cmd and "main_lincls.py" in cmd:
            folder = cmd[cmd.index("--ckpt-dir") + 1]
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "metrics.csv"), "w") as f:
                f.write("epoch,acc1,acc5\n0,40.0,90.0\n")
        with open(log, "w") as f:
            f.write("ran\n")
        return 0.0

    monkeypatch.setattr(pipeline, "sh", sh)
    monkeypatch.setattr(pipeline, "checkpoint_knn", lambda *a, **k: 50.0)
    return calls


def test_every_step_is_an_argument_list_holding_the_paths_as_they_are(weird_data, tmp_path, monkeypatch):
    calls = fake_steps(monkeypatch)
    runs, results = tmp_path / WEIRD / "runs", tmp_path / WEIRD / "res ults"
    rows, table = pipeline.run_pipeline(demo.CONFIG, weird_data, str(runs), str(results), scale=0.01, lanes=1)
    assert "| student_disco | DisCo <- resnet18 |" in table
    assert all(isinstance(cmd, list) and all(isinstance(a, str) for a in cmd) for cmd, _ in calls)
    steps = [cmd for cmd, _ in calls if any(s in cmd for s in ("main_moco.py", "main.py", "main_lincls.py"))]
    assert len(steps) == 7 and all(cmd[-1] == weird_data for cmd in steps)  # the data path: one argument, unchanged
    disco = next(cmd for cmd in steps if "main.py" in cmd)
    assert disco[disco.index("--teacher") + 1] == str(runs / "teacher" / "ckpt" / "checkpoint_0000.pth.tar")
    assert disco[disco.index("--resume") + 1] == ""  # a fresh run, as the shell's --resume '' was
    assert disco[disco.index("--crop-min") + 1] == "0.8" and disco[disco.index("--teacher-bn") + 1] == "eval"
    # The picture steps name the folders the same way.
    draw = next(cmd for cmd, _ in calls if "draw.py" in cmd)
    assert draw[draw.index("--out") + 1] == str(results / "tsne.png")
    # Every printed line, `$ (cd FOLDER && ARGS)`, split as a shell would, gives the argument list back.
    for cmd, cwd in calls:
        words = shlex.split(pipeline.shown(cmd, cwd))
        assert words[:2] == ["$", "(cd"] and words[4:-1] == cmd[:-1] and words[-1] == cmd[-1] + ")"


def test_a_printed_step_line_pasted_into_a_shell_runs_the_same_arguments(tmp_path):
    log = tmp_path / "step.log"
    cmd = [sys.executable, "-c", "import sys; print(sys.argv[1:])", WEIRD, "", "$HOME", "a;b"]
    pipeline.sh(cmd, os.path.join(pipeline.REPO_ROOT, "moco"), str(log))
    assert log.read_text(encoding="utf-8").strip() == repr([WEIRD, "", "$HOME", "a;b"])
    line = pipeline.shown(cmd, os.path.join(pipeline.REPO_ROOT, "moco"))
    pasted = subprocess.run(["bash", "-c", line[2:]], cwd=pipeline.REPO_ROOT, capture_output=True, text=True)
    assert pasted.stdout.strip() == repr([WEIRD, "", "$HOME", "a;b"])


def test_a_failed_step_is_one_line_naming_its_log(tiny_data, tmp_path, monkeypatch):
    log = tmp_path / "step.log"
    with pytest.raises(pipeline.StepFailed) as failed:
        pipeline.sh([sys.executable, "-c", "raise SystemExit(3)"], pipeline.REPO_ROOT, str(log))
    assert str(failed.value) == f"error: a step failed (exit 3); its output is above and in '{log}'"

    def sh(cmd, cwd, log, tag=None, threads=1):
        raise failed.value

    monkeypatch.setattr(pipeline, "sh", sh)
    monkeypatch.setattr(
        sys, "argv", ["tab1", "--data", tiny_data, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r")]
    )
    with pytest.raises(SystemExit) as exc:
        tab1.main()
    assert exc.value.code == str(failed.value)  # printed on stderr as it is, exit status 1


def test_a_rerun_replaces_the_folders_the_pipeline_made(tiny_data, tmp_path, monkeypatch, capsys):
    fake_steps(monkeypatch)
    runs, results = tmp_path / "runs", tmp_path / "results"
    pipeline.run_pipeline(demo.CONFIG, tiny_data, str(runs), str(results), scale=0.01, lanes=1)
    teacher = runs / "teacher"
    assert (teacher / pipeline.MARKER).is_file() and (teacher / "pretrain.log").is_file()
    (teacher / "ckpt").mkdir()
    (teacher / "ckpt" / "checkpoint_0000.pth.tar").write_bytes(b"an earlier run's")
    capsys.readouterr()
    pipeline.run_pipeline(demo.CONFIG, tiny_data, str(runs), str(results), scale=0.01, lanes=1)
    assert "=> replaced 5 folder(s) made by an earlier run of this pipeline" in capsys.readouterr().out
    assert not (teacher / "ckpt").exists() and (teacher / pipeline.MARKER).is_file()  # a fresh start


def test_tab1_with_a_missing_data_folder_deletes_nothing(tmp_path):
    # The case: DIR/teacher is the user's; the data folder is missing.
    out = tmp_path / "DIR"
    (out / "teacher").mkdir(parents=True)
    (out / "teacher" / "mine.pth.tar").write_bytes(b"the user's checkpoint")
    r = run(f"python3 tools/tab1_small.py --out {out} --data /missing --results {tmp_path / 'res'}")
    assert r.returncode == 2, r.stdout[-2000:]
    assert r.stdout.strip().splitlines() == [
        "error: --data '/missing' does not exist: expected a folder holding train/CLASS/IMAGE and val/CLASS/IMAGE"
    ]
    assert (out / "teacher" / "mine.pth.tar").read_bytes() == b"the user's checkpoint"
    assert sorted(os.listdir(out)) == ["teacher"] and not (tmp_path / "res").exists()


def test_a_folder_the_pipeline_did_not_make_is_refused_before_anything_is_made(
    tiny_data, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "DIR"
    (out / "student_moco").mkdir(parents=True)
    (out / "student_moco" / "notes.txt").write_text("mine")
    line = one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(out)], monkeypatch)
    assert line == (
        f"error: --out: '{out / 'student_moco'}' exists without the {pipeline.MARKER} marker that this pipeline "
        "leaves in the folders it makes (a folder of yours, or of a demo older than the marker): "
        "move it away or use another --out; nothing was changed"
    )
    assert sorted(os.listdir(out)) == ["student_moco"]  # no other folder was made either
    assert os.listdir(out / "student_moco") == ["notes.txt"]


def test_a_file_of_the_users_in_a_folder_the_pipeline_made_is_refused(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "DIR"
    pipeline.fresh_folders([str(out / "teacher")])
    (out / "teacher" / "notes.txt").write_text("mine")
    line = one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(out)], monkeypatch)
    assert line.startswith(f"error: --out: '{out / 'teacher'}', which an earlier run of this pipeline made, holds")
    assert "files it did not write (notes.txt): move them away or use another --out; nothing was changed" in line
    assert (out / "teacher" / "notes.txt").read_text() == "mine"


def test_a_link_or_a_file_in_the_pipelines_way_is_refused(tiny_data, tmp_path, monkeypatch, capsys):
    out, elsewhere = tmp_path / "DIR", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / pipeline.MARKER).write_text("")  # even a marked folder: a link is never followed to remove
    out.mkdir()
    (out / "teacher").symlink_to(elsewhere)
    line = one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(out)], monkeypatch)
    assert f"'{out / 'teacher'}' is in the pipeline's way and is not a folder it made" in line
    assert (elsewhere / pipeline.MARKER).exists()
    (out / "teacher").unlink()
    (out / "teacher").write_text("a file")
    assert "is in the pipeline's way" in one_error(
        capsys, tab1.main, ["--data", tiny_data, "--out", str(out)], monkeypatch
    )
    line = one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(out / "teacher")], monkeypatch)
    assert line == f"error: --out '{out / 'teacher'}' is a file: expected a folder (or a path where one can be made)"


@pytest.mark.parametrize(
    "layout, expected",
    [
        ("file", " is not a folder"),
        ("no_val", " has no val/ folder"),
        ("empty_train", ": train/ holds no class folder"),
    ],
)
def test_a_data_folder_that_is_no_imagefolder_tree_is_one_line(tmp_path, monkeypatch, capsys, layout, expected):
    data = tmp_path / "data"
    if layout == "file":
        data.write_text("not a folder")
    else:
        (data / "train" / ("" if layout == "empty_train" else "cat")).mkdir(parents=True)
        if layout == "empty_train":
            (data / "val" / "cat").mkdir(parents=True)
    line = one_error(capsys, tab1.main, ["--data", str(data), "--out", str(tmp_path / "o")], monkeypatch)
    assert line == f"error: --data '{data}'{expected}: expected a folder holding train/CLASS/IMAGE and val/CLASS/IMAGE"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--pretrain-flags", "--disco-flags"])
def test_an_unbalanced_quote_in_a_flag_string_is_one_line_naming_the_flag(
    tiny_data, tmp_path, monkeypatch, capsys, flag
):
    line = one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(tmp_path / "o"), flag, "--lr '0.03"],
                     monkeypatch)  # fmt: skip
    assert line == (
        f'error: {flag} "--lr \'0.03": No closing quotation: expected flags as a shell splits them (every quote closed)'
    )
    assert not (tmp_path / "o").exists()


def test_a_quoted_value_in_a_flag_string_is_one_argument(tiny_data, tmp_path, monkeypatch):
    calls = fake_steps(monkeypatch)
    config = dict(demo.CONFIG, pretrain_flags="--lr 0.03 --note 'a b'")
    pipeline.run_pipeline(config, tiny_data, str(tmp_path / "r"), str(tmp_path / "s"), 0.01, False, 1)
    teacher = next(cmd for cmd, _ in calls if "main_moco.py" in cmd)
    assert teacher[teacher.index("--note") + 1] == "a b"


@pytest.mark.parametrize(
    "argv, line",
    [
        (["--seeds", "0"], "error: --seeds 0: expected an integer above 0"),
        (["--scale", "nan"], "error: --scale nan: expected a finite number"),
        (["--scale", "-1"], "error: --scale -1.0: expected a number above 0"),
        (["--teacher-epochs", "0"], "error: --teacher-epochs 0: expected an integer above 0"),
        (["--student-epochs", "-2"], "error: --student-epochs -2: expected an integer above 0"),
        (
            ["--students", "resnet18", "mobilenetv3", "resnet18"],
            "error: --students resnet18 mobilenetv3 resnet18: resnet18 listed twice (each arch once)",
        ),
    ],
)
def test_tab1_counts_and_students_that_make_no_sense(tiny_data, tmp_path, monkeypatch, capsys, argv, line):
    assert one_error(capsys, tab1.main, ["--data", tiny_data, "--out", str(tmp_path / "o"), *argv], monkeypatch) == line
    assert not (tmp_path / "o").exists()


def test_tab1_later_seeds_folders_are_checked_before_the_first_seed_runs(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o"
    (out / "seed1" / "teacher").mkdir(parents=True)
    argv = ["--data", tiny_data, "--out", str(out), "--seeds", "2", "--results", str(tmp_path / "r")]
    assert f"'{out / 'seed1' / 'teacher'}' exists without the" in one_error(capsys, tab1.main, argv, monkeypatch)
    assert sorted(os.listdir(out)) == ["seed1"]


def test_tab1_replot_without_a_table_is_one_line(tmp_path, monkeypatch, capsys):
    line = one_error(capsys, tab1.main, ["--replot", "--results", str(tmp_path)], monkeypatch)
    assert line == (
        f"error: --replot: no table at '{tmp_path / 'table.md'}' (expected the table.md that a run with these "
        "--results wrote)"
    )


@pytest.mark.parametrize(
    "argv, env, line",
    [
        ([], {"DEMO_SCALE": "fast"}, "error: DEMO_SCALE 'fast': expected a number above 0 (0.2: a quick smoke run)"),
        ([], {"DEMO_SCALE": "inf"}, "error: DEMO_SCALE inf: expected a number above 0"),
        (["--lanes", "0"], {}, "error: --lanes 0: expected an integer above 0"),
        (["--batch-size", "0"], {}, "error: --batch-size 0: expected an integer above 0"),
        (["--data", "/missing"], {}, "error: --data '/missing' does not exist: expected a folder holding"),
    ],
)
def test_demo_bad_input_is_one_line_before_the_reference_step(tmp_path, monkeypatch, capsys, argv, env, line):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(demo, "reference_step_seconds", lambda: pytest.fail("the reference step ran"))
    out = ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    assert one_error(capsys, demo.main, [*argv, *out], monkeypatch).startswith(line)
    assert os.listdir(tmp_path) == []


def test_teacher_spread_runs_each_variant_from_an_argument_list(weird_data, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("spread", os.path.join(SOURCE, "benchmarks", "teacher_spread.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    seen = []

    def call(cmd, **kwargs):
        seen.append((cmd, kwargs))
        return 0

    monkeypatch.setattr(sweep.subprocess, "call", call)
    out = str(tmp_path / WEIRD / "out")
    folder = sweep.train("base", sweep.variant_flags("base"), weird_data, out, 2, 0)
    (cmd, kwargs), = seen  # fmt: skip
    assert "shell" not in kwargs and cmd[-1] == weird_data and cmd[cmd.index("--ckpt-dir") + 1] == folder + "/ckpt"
    assert cmd[cmd.index("--resume") + 1] == "" and "--cos" in cmd and cmd[cmd.index("--lr") + 1] == "0.03"
    assert shlex.split(sweep.command_line(sweep.BASE)) == sweep.flag_args(sweep.BASE)
