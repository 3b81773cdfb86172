"""The demo pipeline end to end at a tiny scale (the wiring, not the numbers)."""

import os
import shlex
import shutil

from conftest import run


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
    assert len(steps) == 7 and steps[-1].startswith("[demo] 7/7 steps done") and "min left" in steps[0]
    assert "reference step on this machine" in text
    # The DisCo student was trained against the demo's own teacher checkpoint.
    assert "--teacher " + q(str(out / "teacher" / "ckpt" / "checkpoint_0000.pth.tar")) in r.stdout


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
