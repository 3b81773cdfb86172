"""The demo pipeline end to end at a tiny scale (the wiring, not the numbers)."""
import os

from conftest import run


def test_demo_pipeline_runs_and_writes_table_and_pictures(tiny_data, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    r = run(f"python3 -m selfsup.demo --data {tiny_data} --scale 0.01 --batch-size 16 --out {out} --results {results}")
    assert r.returncode == 0, r.stdout[-3000:]
    text = (results / "table.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    # The flags that keep the demo's meaning when defaults change are on its command lines and under its table.
    assert "DisCo flags: `--teacher-bn eval`" in text
    assert "main.py" in r.stdout and "--teacher-bn eval --teacher_arch" in r.stdout
    assert "main_moco.py" in r.stdout and "--resume ''" in r.stdout
    assert [line.split("|")[1].strip() for line in table[2:]] == ["random_init", "teacher", "student_moco",
                                                                   "student_disco"]
    assert "DisCo <- resnet34" in table[5]
    for line in table[2:]:  # kNN, linear top-1 and top-5 are percentages
        assert all(0.0 <= float(x) <= 100.0 for x in line.split("|")[5:8]), line
    # read_table (tab1_small --replot) gets the same rows back.
    from selfsup.demo import read_table
    rows = read_table(results / "table.md")
    assert [r["name"] for r in rows] == ["random_init", "teacher", "student_moco", "student_disco"]
    assert [r["acc1"] for r in rows] == [float(line.split("|")[6]) for line in table[2:]]
    for png in ("tsne.png", "curves_pretrain.png", "curves_lincls.png"):
        assert os.path.getsize(results / png) > 10_000, png
    # The DisCo student was trained against the demo's own teacher checkpoint.
    assert "--teacher " + str(out / "teacher" / "ckpt" / "checkpoint_0000.pth.tar") in r.stdout


def test_run_steps_respects_dependencies_and_lanes():
    import threading
    import time
    from selfsup.demo import run_steps
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
    run_steps({"teacher": ([], step("teacher", 0.3)), "student": ([], step("student")),
               "disco": (["teacher"], step("disco")), "eval": (["student"], step("eval"))}, lanes=2)
    order = [(kind, name) for kind, name, _ in log]
    assert order.index(("end", "teacher")) < order.index(("start", "disco"))
    assert order.index(("end", "student")) < order.index(("start", "eval"))
    assert max(n for _, _, n in log) == 2  # two lanes were used, never more
    # eval starts while the teacher still runs: a free lane is not left idle
    assert order.index(("start", "eval")) < order.index(("end", "teacher"))


def test_run_steps_stops_on_a_failed_step():
    import pytest
    from selfsup.demo import run_steps

    def boom():
        raise RuntimeError("step broke")
    ran = []
    with pytest.raises(RuntimeError, match="step broke"):
        run_steps({"a": ([], boom), "b": (["a"], lambda: ran.append("b"))}, lanes=1)
    assert ran == []
