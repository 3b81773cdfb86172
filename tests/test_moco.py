import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.methods.losses import info_nce, info_nce_logits
from selfsup.methods.moco import MoCo


def tiny_encoder(dim=8):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, dim),
    )


def test_info_nce_matches_an_independent_computation():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(5, 8), dim=1), F.normalize(torch.randn(5, 8), dim=1)
    queue = F.normalize(torch.randn(8, 11), dim=0)
    loss, logits, labels = info_nce(q, k, queue, 0.2)
    expected = 0.0
    for i in range(5):
        pos = torch.exp(q[i] @ k[i] / 0.2)
        neg = torch.exp(q[i] @ queue / 0.2).sum()
        expected += -torch.log(pos / (pos + neg))
    assert torch.allclose(loss, expected / 5, atol=1e-5)
    assert logits.shape == (5, 12) and labels.eq(0).all()


def test_logits_stay_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(8, 128), dim=1), F.normalize(torch.randn(8, 128), dim=1)
    queue = F.normalize(torch.randn(128, 512), dim=0)
    reference, _ = info_nce_logits(q, k, queue, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = info_nce_logits(q, k, queue, 0.2)
        low = (q @ queue) / 0.2  # what autocast makes of the same matmul
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, reference, atol=1e-5, rtol=0)
    # bf16 rounding would be visible at this tolerance: the check can fail.
    assert not torch.allclose(low.float(), reference[:, 1:], atol=1e-5, rtol=0)


def test_queue_wraps_when_K_is_not_a_multiple_of_the_batch():
    model = MoCo(tiny_encoder(), dim=8, K=10, m=0.99, T=0.2)
    keys = [F.normalize(torch.randn(4, 8), dim=1) for _ in range(3)]
    for k in keys:
        model._dequeue_and_enqueue(k)
    # 12 keys into 10 slots: slots 0-1 hold the last two keys, 2-9 keys 2..9.
    flat = torch.cat(keys)
    assert torch.allclose(model.queue[:, 0:2].t(), flat[10:12])
    assert torch.allclose(model.queue[:, 2:10].t(), flat[2:10])
    assert int(model.queue_ptr) == 2


def test_momentum_update_moves_keys_towards_queries():
    model = MoCo(tiny_encoder(), dim=8, K=16, m=0.9, T=0.2)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.encoder_k.parameters()]
    model._momentum_update_key_encoder()
    for b, p_k, p_q in zip(before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        assert torch.allclose(p_k, 0.9 * b + 0.1 * p_q)


def test_keys_use_bn_groups_of_a_shuffled_batch():
    """One process: each key's BN statistics come from a random group of the
    batch, not from the group its query sits in."""
    torch.manual_seed(0)
    model = MoCo(tiny_encoder(), dim=8, K=64, T=0.2, bn_splits=4).train()
    x = torch.randn(16, 3, 8, 8)
    torch.manual_seed(123)
    k = model.encode_keys(x)
    torch.manual_seed(123)
    perm = torch.randperm(16)
    manual = torch.cat([model.encoder_k(part) for part in torch.tensor_split(x[perm], 4)])
    manual = F.normalize(manual, dim=1)[torch.argsort(perm)]
    assert torch.allclose(k, manual, atol=1e-6)
    unshuffled = F.normalize(torch.cat([model.encoder_k(part) for part in torch.tensor_split(x, 4)]), dim=1)
    assert not torch.allclose(k, unshuffled, atol=1e-4), "keys must not share their query's BN group"


def test_forward_returns_loss_and_logits_and_fills_the_queue():
    model = MoCo(tiny_encoder(), dim=8, K=32, T=0.2, bn_splits=2)
    out = model(torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8))
    assert out["logits"].shape == (8, 33) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder_q[0].weight.grad is not None
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert int(model.queue_ptr) == 8
