"""EpochMeters: the averages of an epoch and its printed lines, against
values worked out here from the batches themselves."""

import re

import numpy as np
import torch

from selfsup.engine.progress import EpochMeters

SIZES = [4, 4, 2]
LOSSES = [2.0, 1.0, 4.0]
PART_A = [0.5, 1.5, 3.0]


def batches(num_classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for n, loss, part in zip(SIZES, LOSSES, PART_A):
        logits = torch.randn(n, num_classes, generator=g)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        # A loss still on its graph (as in a training step), a part that is None
        # (SwAV without a teacher), and an entry that is not a loss.
        yield (
            n,
            {
                "loss": torch.tensor(loss, requires_grad=True),
                "loss_a": torch.tensor(part),
                "loss_b": None,
                "logits": logits,
                "labels": labels,
                "queue": 3,
            },
        )


def hits(logits, labels, k):
    """How many samples have their label among the k largest logits (ties: none here)."""
    scores = logits.numpy()
    above = (scores > scores[np.arange(len(labels)), labels.numpy()][:, None]).sum(axis=1)
    return int((above < k).sum())


def run_epoch(meters):
    for i, (n, out) in enumerate(batches()):
        meters.data_loaded()
        meters.update(out, n)
        meters.batch_done(i)
    return meters.summary()


def test_summary_is_the_sample_weighted_average():
    row = run_epoch(EpochMeters(len(SIZES)))
    total = sum(SIZES)
    assert list(row) == ["loss", "loss_a", "acc1", "acc5", "epoch_time"]
    assert abs(row["loss"] - (2.0 * 4 + 1.0 * 4 + 4.0 * 2) / total) < 1e-12  # 2.0
    assert abs(row["loss_a"] - (0.5 * 4 + 1.5 * 4 + 3.0 * 2) / total) < 1e-7  # 1.4 (float32 parts)
    for k in (1, 5):
        expected = 100.0 * sum(hits(out["logits"], out["labels"], k) for _, out in batches()) / total
        assert abs(row[f"acc{k}"] - expected) < 1e-4, k
    assert row["epoch_time"] >= 0.0


def test_top1_only_and_no_accuracy():
    assert list(run_epoch(EpochMeters(3, topk=(1,)))) == ["loss", "loss_a", "acc1", "epoch_time"]
    meters = EpochMeters(1, topk=())
    meters.update({"loss": 1.5, "logits": torch.zeros(2, 3), "labels": torch.zeros(2, dtype=torch.long)}, 2)
    assert list(meters.summary()) == ["loss", "epoch_time"]


NUMBER = r"\s*[0-9.]+"


def test_lines_every_print_freq_batches_and_at_the_last(capsys):
    run_epoch(EpochMeters(len(SIZES), "Epoch: [7]", print_freq=2))
    lines = capsys.readouterr().out.splitlines()
    assert [re.match(r"Epoch: \[7\]\[(\d)/3\]\t", line).group(1) for line in lines] == ["0", "2"]
    last = lines[-1].split("\t")
    everything = list(batches())
    n, out = everything[-1]
    acc = {
        k: (
            100.0 * hits(out["logits"], out["labels"], k) / n,  # (this batch, the running average)
            100.0 * sum(hits(o["logits"], o["labels"], k) for _, o in everything) / sum(SIZES),
        )
        for k in (1, 5)
    }
    assert re.fullmatch(rf"Time{NUMBER} \({NUMBER}\)", last[1]) and re.fullmatch(rf"Data{NUMBER} \({NUMBER}\)", last[2])
    assert last[3:7] == [
        f"Loss {4.0:.4e} ({2.0:.4e})",
        f"loss_a {3.0:.4e} ({1.4:.4e})",
        f"Acc@1 {acc[1][0]:6.2f} ({acc[1][1]:6.2f})",
        f"Acc@5 {acc[5][0]:6.2f} ({acc[5][1]:6.2f})",
    ]
    assert re.fullmatch(r"[0-9.]+ batch/s  ETA \d+:\d\d:\d\d", last[7]) and len(last) == 8


def test_validation_lines_part_titles_and_shown_values(capsys):
    meters = EpochMeters(12, "Test: ", print_freq=10, topk=(), data_time=False, part_names={"loss_a": "A"})
    meters.update({"loss": 3.0, "loss_a": 1.0}, 5)
    meters.show("Lr", 0.25)
    meters.batch_done(0)
    meters.show("Lr", 0.125)  # shown as it is, not averaged
    meters.batch_done(11)
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [fields[0] for fields in lines] == ["Test: [ 0/12]", "Test: [11/12]"]
    assert [fields[1][:4] for fields in lines] == ["Time", "Time"]
    assert lines[1][2:5] == [f"Loss {3.0:.4e} ({3.0:.4e})", f"A {1.0:.4e} ({1.0:.4e})", "Lr 0.1250 (0.1250)"]


def test_no_print_freq_prints_nothing(capsys):
    run_epoch(EpochMeters(len(SIZES)))
    assert capsys.readouterr().out == ""
