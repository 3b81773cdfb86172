"""Collapse warnings: InfoNCE at ln(K+1) and the teacher's embedding spread."""

import math

import torch

from selfsup.engine.collapse import (
    TEACHER_SPREAD_WARN,
    chance_infonce,
    embedding_spread,
    infonce_rise_warning,
    infonce_warning,
    mean_pairwise_cosine,
    spread_report,
)
from selfsup.engine.pretrain import infonce_history
from selfsup.methods.losses import info_nce

# Epoch-mean InfoNCE of the digits teacher (ResNet-18, the demo's flags, K=1024,
# seed 0; benchmarks/teacher_spread.py): lowest 6.375 at epoch 5, then back up.
DIGITS_TEACHER = [5.99, 6.73, 6.76, 6.60, 6.45, 6.375, 6.38, 6.42, 6.47, 6.54, 6.62, 6.69, 6.76, 6.82, 6.86, 6.89]


def test_constant_embeddings_give_infonce_ln_k_plus_1_and_warn():
    K = 1024
    q = torch.nn.functional.normalize(torch.ones(8, 16), dim=1)
    queue = q[:1].t().repeat(1, K)  # every key equal to every query
    loss = float(info_nce(q, q, queue, 0.2)[0])
    assert abs(loss - math.log(K + 1)) < 1e-5
    assert infonce_warning(loss, K, epoch=3).startswith("warning: epoch 3: InfoNCE")
    assert infonce_warning(loss - 0.5, K, epoch=3) is None


def test_mean_pairwise_cosine_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # cos(a,b)=0, cos(a,c)=cos(b,c)=1/sqrt(2): mean over the three pairs.
    assert abs(mean_pairwise_cosine(z) - (2 / math.sqrt(2)) / 3) < 1e-6
    same = torch.randn(1, 8).repeat(5, 1)
    assert abs(mean_pairwise_cosine(same) - 1.0) < 1e-6
    images = torch.randn(10, 3, 4, 4)
    assert (
        abs(embedding_spread(lambda x: x.flatten(1), images, batch_size=3) - mean_pairwise_cosine(images.flatten(1)))
        < 1e-6
    )


def test_spread_report_warns_only_for_a_collapsed_teacher():
    assert "warning" not in spread_report(0.1, 256)
    assert "warning" in spread_report(TEACHER_SPREAD_WARN + 0.05, 256)


def test_rise_warning_fires_once_the_loss_has_climbed_a_quarter_of_the_way_back_to_chance():
    K, chance = 1024, chance_infonce(1024)
    threshold = 6.375 + 0.25 * (chance - 6.375)  # 6.514
    first = next(e for e in range(len(DIGITS_TEACHER)) if infonce_rise_warning(DIGITS_TEACHER[: e + 1], K))
    assert first == next(e for e, v in enumerate(DIGITS_TEACHER) if e > 5 and v > threshold) == 9
    line = infonce_rise_warning(DIGITS_TEACHER, K)
    assert line.startswith("warning: epoch 15: InfoNCE 6.8900 has climbed back from 6.3750 (epoch 5)")


def test_rise_warning_stays_quiet_on_a_falling_curve_and_ignores_epoch_0():
    K = 1024
    falling = [6.38, 6.50, 6.12, 5.90, 5.71, 5.66, 5.52]
    assert all(infonce_rise_warning(falling[: e + 1], K) is None for e in range(len(falling)))
    # Epoch 0 (random queue) far below the rest is not the run's best.
    assert infonce_rise_warning([4.0, 6.6, 6.5, 6.45], K) is None
    # Noise well within a quarter of the gap is not a climb.
    assert infonce_rise_warning([6.3, 6.2, 6.0, 6.05], K) is None
    assert infonce_rise_warning([6.3, 6.2, 6.0, 6.3], K) is not None


def test_infonce_history_reads_distillation_rows_by_their_infonce():
    rows = [{"loss": "7.5", "loss_nce": "6.8"}, {"loss": "6.9", "loss_nce": ""}, {"loss": "6.1"}]
    assert infonce_history(rows) == [6.8, 6.9, 6.1]
