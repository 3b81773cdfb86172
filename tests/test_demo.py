"""The demo pipeline end to end at a tiny scale (the wiring, not the numbers)."""
import os

from conftest import run


def test_demo_pipeline_runs_and_writes_table_and_pictures(tiny_data, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    r = run(f"python3 -m selfsup.demo --data {tiny_data} --scale 0.01 --batch-size 16 --out {out} --results {results}")
    assert r.returncode == 0, r.stdout[-3000:]
    table = (results / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["teacher", "student_moco", "student_disco"]
    assert "DisCo <- resnet34" in table[4]
    for png in ("tsne.png", "curves_pretrain.png", "curves_lincls.png"):
        assert os.path.getsize(results / png) > 10_000, png
    # The DisCo student was trained against the demo's own teacher checkpoint.
    assert "--teacher " + str(out / "teacher" / "ckpt" / "checkpoint_0000.pth.tar") in r.stdout
