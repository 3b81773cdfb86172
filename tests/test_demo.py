"""The demo pipeline end to end at a tiny scale (the wiring, not the numbers)."""

import json
import os
import shlex
import shutil

import pytest
import torch
from conftest import run

from selfsup.models.encoders import load_backbone


def features_equal(got, reference):
    """Equal as tools/export.py's check has it: at most 1e-4 of the largest feature apart."""
    got = torch.as_tensor(got)
    assert got.shape == reference.shape, (got.shape, reference.shape)
    assert float((got - reference).abs().max()) <= 1e-4 * float(reference.abs().max())


def load_line_model(line):
    """The model that the printed load line builds, as a user who pastes it gets it."""
    scope = {}
    exec(line, scope)
    return scope["model"].eval()


def test_demo_pipeline_runs_and_writes_table_and_pictures(tiny_data, tmp_path):
    # Every path holds a space, both quotes and a non-ASCII letter: the steps are argument lists.
    weird = tmp_path / "d a't\"a é"
    data, out, results = weird / "data", weird / "runs", weird / "res ults"
    shutil.copytree(tiny_data, data)
    q = shlex.quote
    r = run(f"python3 tools/demo.py --data {q(str(data))} --scale 0.01 --batch-size 16 --out {q(str(out))} "
            f"--results {q(str(results))}")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:]
    text = (results / "table.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    # The flags that keep the demo's meaning when defaults change are on its command lines and under its table.
    assert "DisCo flags: `--teacher-bn eval`" in text
    assert "Pretraining flags: `" in text and "--crop-min 0.8" in text
    commands = [line for line in r.stdout.splitlines() if " $ (cd " in line and "main_lincls" not in line]
    exports = [line for line in commands if "tools/export.py" in line]
    commands = [line for line in commands if line not in exports]
    assert len(commands) == 3 and all("--crop-min 0.8" in c for c in commands), commands
    assert "main.py" in r.stdout and "--teacher-bn eval --teacher_arch" in r.stdout
    assert "main_moco.py" in r.stdout and "--resume ''" in r.stdout
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "random_init",
        "teacher",
        "student_moco",
        "student_disco",
    ]
    assert "DisCo <- resnet18" in table[5]
    for line in table[2:]:  # kNN, linear top-1 and top-5 are percentages
        assert all(0.0 <= float(x) <= 100.0 for x in line.split("|")[5:8]), line
    # read_table (tab1_small --replot) gets the same rows back.
    from pipeline import read_table

    rows = read_table(results / "table.md")
    assert [r["name"] for r in rows] == ["random_init", "teacher", "student_moco", "student_disco"]
    assert [r["acc1"] for r in rows] == [float(line.split("|")[6]) for line in table[2:]]
    for png in ("tsne.png", "curves_pretrain.png", "curves_lincls.png"):
        assert os.path.getsize(results / png) > 10_000, png
    # The machine's reference time first, then a progress line per finished step (3 pretrainings, 4 evaluations).
    assert r.stdout.index("=> reference step on this machine:") < r.stdout.index("$ (cd moco")
    steps = [line for line in r.stdout.splitlines() if line.startswith("[demo] ")]
    # 3 pretrainings, 4 evaluations and the DisCo student's export
    assert len(steps) == 8 and steps[-1].startswith("[demo] 8/8 steps done") and "min left" in steps[0]
    assert any("steps done (export student_disco)" in line for line in steps)
    assert "reference step on this machine" in text
    # The DisCo student was trained against the demo's own teacher checkpoint.
    student = out / "student_disco" / "ckpt" / "checkpoint_0000.pth.tar"
    assert "--teacher " + q(str(out / "teacher" / "ckpt" / "checkpoint_0000.pth.tar")) in r.stdout
    # ... and its final checkpoint exported to the results folder, in both formats, by tools/export.py.
    safetensors, onnx_file = results / "disco_student.safetensors", results / "disco_student.onnx"
    assert safetensors.is_file() and onnx_file.is_file()
    assert len(exports) == 2 and all(q(str(student)) in line and line.endswith(" --force)") for line in exports)
    # The demo ends with the files and the line that loads the student; that line, run, gives its features.
    last = r.stdout.strip().splitlines()[-3:]
    assert f"'{safetensors}'" in last[0] and f"'{onnx_file}'" in last[0] and last[1] == "Load it with:", last
    assert last[2].startswith('import timm; model = timm.create_model("mobilenetv3_large_100", pretrained=True')
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = load_backbone("mobilenetv3", str(student)).eval()(x)
        features_equal(load_line_model(last[2])(x), reference)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    features_equal(session.run(None, {"images": x.numpy()})[0], reference)


def test_the_export_step_skips_onnx_in_one_line_when_it_is_missing_and_a_rerun_replaces_the_files(
    tmp_path, monkeypatch, capsys
):
    import pipeline

    from selfsup.models.backbones import create_backbone, set_head
    from selfsup.models.heads import projection_head

    torch.manual_seed(0)
    model, width = create_backbone("test_efficientnet", True)
    set_head(model, projection_head(width, 16, mlp=True, hidden=32))
    ckpt = tmp_path / "run" / "ckpt" / "checkpoint_0000.pth.tar"
    ckpt.parent.mkdir(parents=True)
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 1, "arch": "test_efficientnet", "small_images": True, "state_dict": state}, ckpt)
    results = tmp_path / "results"
    results.mkdir()
    stale = results / "disco_student.onnx"
    stale.write_bytes(b"an earlier run's ONNX file, of another checkpoint")
    missing = "--format onnx needs onnx, not installed: pip install 'selfsup[export]'"
    monkeypatch.setattr(pipeline, "onnx_missing", lambda: missing)
    row = dict(name="student_disco", folder=str(tmp_path / "run"), ckpt=str(ckpt))
    checkpoint_bytes = ckpt.read_bytes()
    for rerun in (False, True):  # the rerun finds the first run's file: replaced (--force), no failure
        pipeline.export_student(row, str(results))
        said = [line for line in capsys.readouterr().out.splitlines() if "ONNX" in line]
        removed = "" if rerun else f"; removed the earlier run's '{stale}'"
        assert said == [f"[student_disco] => no ONNX export: {missing}{removed}"]
        assert list(row["exports"]) == ["safetensors"]
        assert sorted(os.listdir(results)) == ["disco_student.safetensors"]
    assert ckpt.read_bytes() == checkpoint_bytes
    path, line = row["exports"]["safetensors"]
    assert path == str(results / "disco_student.safetensors") and json.dumps(path) in line
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features_equal(load_line_model(line)(x), load_backbone("test_efficientnet", str(ckpt)).eval()(x))


def test_an_export_log_without_a_load_line_is_a_failed_step(tmp_path):
    import pipeline

    log = tmp_path / "export_safetensors.log"
    log.write_text("=> read 'x.pth.tar'\n")
    with pytest.raises(pipeline.StepFailed, match="printed no load line; its output is in"):
        pipeline.load_line_of(str(log))


def test_run_steps_respects_dependencies_and_lanes():
    import threading
    import time

    from pipeline import run_steps

    log, lock, active = [], threading.Lock(), [0]

    def step(name, seconds=0.05):
        def fn():
            with lock:
                active[0] += 1
                log.append(("start", name, active[0]))
            time.sleep(seconds)
            with lock:
                active[0] -= 1
                log.append(("end", name, active[0]))

        return fn

    finished = []
    run_steps(
        {
            "teacher": ([], step("teacher", 0.3)),
            "student": ([], step("student")),
            "disco": (["teacher"], step("disco")),
            "eval": (["student"], step("eval")),
        },
        lanes=2,
        on_done=finished.append,
    )
    order = [(kind, name) for kind, name, _ in log]
    assert finished == [name for kind, name in order if kind == "end"]  # on_done once per step, as each ends
    assert order.index(("end", "teacher")) < order.index(("start", "disco"))
    assert order.index(("end", "student")) < order.index(("start", "eval"))
    assert max(n for _, _, n in log) == 2  # two lanes were used, never more
    # eval starts while the teacher still runs: a free lane is not left idle
    assert order.index(("start", "eval")) < order.index(("end", "teacher"))


def test_run_steps_stops_on_a_failed_step():
    import pytest
    from pipeline import run_steps

    def boom():
        raise RuntimeError("step broke")

    ran = []
    with pytest.raises(RuntimeError, match="step broke"):
        run_steps({"a": ([], boom), "b": (["a"], lambda: ran.append("b"))}, lanes=1)
    assert ran == []


def test_pipeline_progress_estimates_the_time_left_from_the_cost_done(monkeypatch):
    import time

    from pipeline import PipelineProgress

    progress = PipelineProgress({"a": 1.0, "b": 3.0})
    monkeypatch.setattr(time, "time", lambda: progress.start + 60.0)  # one minute for cost 1 ...
    assert progress.finished("a") == "[demo] 1/2 steps done (a); elapsed 1.0 min, about 3.0 min left"
    assert progress.finished("b") == "[demo] 2/2 steps done (b); elapsed 1.0 min"  # ... nothing left
