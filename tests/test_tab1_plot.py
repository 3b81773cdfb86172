"""tools/tab1_small.py: the bar plot reads the demo pipeline's rows."""

import os

import tab1_small as tab1  # tools/ is on pytest's pythonpath (pyproject.toml)


def test_bar_plot_pairs_each_baseline_with_its_disco_student(tmp_path, monkeypatch):
    rows = [
        dict(name="random_init", method="none", arch="resnet18", acc1=50.0),
        dict(name="teacher", method="MoCo-v2", arch="resnet34", acc1=80.0),
        dict(name="student_moco_resnet18", method="MoCo-v2", arch="resnet18", acc1=60.0),
        dict(name="student_disco_resnet18", method="DisCo <- resnet34", arch="resnet18", acc1=70.0),
        dict(name="student_moco_efficientb0", method="MoCo-v2", arch="efficientb0", acc1=55.0),
        dict(name="student_disco_efficientb0", method="DisCo <- resnet34", arch="efficientb0", acc1=65.0),
    ]
    bars = []
    real_bar = tab1.plt.Axes.bar

    def spy(ax, x, height, *args, **kwargs):
        bars.append((kwargs.get("label"), list(height)))
        return real_bar(ax, x, height, *args, **kwargs)

    monkeypatch.setattr(tab1.plt.Axes, "bar", spy)
    tab1.bar_plot(rows, str(tmp_path / "tab1.png"))
    assert bars == [("MoCo-v2 student", [60.0, 55.0]), ("DisCo student", [70.0, 65.0])]
    assert os.path.getsize(tmp_path / "tab1.png") > 10_000


def test_replot_reads_the_written_table(tmp_path):
    (tmp_path / "table.md").write_text(
        "| model | method | arch | pretrain epochs | kNN top-1 | linear top-1 | linear top-5 | minutes |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| teacher | MoCo-v2 | resnet34 | 30 | 87.9 | 86.5 | 99.9 | 23.8 |\n"
        "| student_moco_resnet18 | MoCo-v2 | resnet18 | 10 | 76.9 | 74.5 | 99.6 | 5.9 |\n"
    )
    rows = tab1.read_table(str(tmp_path / "table.md"))
    assert [(r["name"], r["arch"], r["acc1"]) for r in rows] == [
        ("teacher", "resnet34", 86.5),
        ("student_moco_resnet18", "resnet18", 74.5),
    ]


def test_seeds_summary_is_mean_and_sample_std_per_cell(tmp_path, monkeypatch):
    import statistics

    def table(seed):
        return [
            dict(
                name="teacher",
                method="MoCo-v2",
                arch="resnet34",
                epochs=30.0,
                knn=80.0 + seed,
                acc1=70.0 + 2 * seed,
                acc5=99.0,
                minutes=1.0,
            ),
            dict(
                name="student_moco_resnet18",
                method="MoCo-v2",
                arch="resnet18",
                epochs=10.0,
                knn=60.0,
                acc1=50.0 + seed * seed,
                acc5=90.0,
                minutes=2.0,
            ),
            dict(
                name="student_disco_resnet18",
                method="DisCo <- resnet34",
                arch="resnet18",
                epochs=10.0,
                knn=75.0,
                acc1=65.0,
                acc5=95.0,
                minutes=3.0,
            ),
        ]

    rows = tab1.summarise([table(0), table(1), table(2)])
    assert [r["name"] for r in rows] == ["teacher", "student_moco_resnet18", "student_disco_resnet18"]
    # acc1 of the teacher over seeds: 70, 72, 74 -> mean 72, sample std 2; the baseline's: 50, 51, 54.
    assert rows[0]["acc1"] == 72.0 and rows[0]["acc1_std"] == 2.0 and rows[0]["seeds"] == 3
    assert abs(rows[1]["acc1_std"] - statistics.stdev([50.0, 51.0, 54.0])) < 1e-12
    assert rows[2]["acc1_std"] == 0.0
    text = tab1.summary_table(rows)
    assert "| teacher | MoCo-v2 | resnet34 | 30 | 3 | 81.0 ± 1.0 | 72.0 ± 2.0 | 99.0 ± 0.0 | 1.0 |" in text
    errs = []
    real_bar = tab1.plt.Axes.bar

    def spy(ax, x, height, *args, **kwargs):
        errs.append(kwargs.get("yerr"))
        return real_bar(ax, x, height, *args, **kwargs)

    monkeypatch.setattr(tab1.plt.Axes, "bar", spy)
    tab1.bar_plot(rows, str(tmp_path / "tab1.png"))
    assert errs[0] == [rows[1]["acc1_std"]] and errs[1] is None  # the DisCo bars have no spread here


def test_seeds_summary_takes_minutes_from_the_pipelines_seconds():
    # run_pipeline's rows carry "seconds"; a table read back carries "minutes".
    live = [dict(name="teacher", method="MoCo-v2", arch="resnet18", epochs=16.0, knn=1.0, acc1=1.0, acc5=1.0,
                 seconds=60.0 * (2 + s)) for s in range(3)]  # fmt: skip
    rows = tab1.summarise([[r] for r in live])
    assert rows[0]["minutes"] == 3.0 and rows[0]["minutes_std"] == 1.0
