"""Collapse warnings: InfoNCE at ln(K+1) and the teacher's embedding spread."""

import math

import torch

from selfsup.engine.collapse import (
    TEACHER_SPREAD_WARN,
    embedding_spread,
    infonce_warning,
    mean_pairwise_cosine,
    spread_report,
)
from selfsup.methods.losses import info_nce


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
