"""Split BatchNorm: BN groups of the batch in one forward (--bn-splits)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.errors import UserError
from selfsup.methods.disco import DisCo
from selfsup.methods.moco import MoCo
from selfsup.models.backbones import create_backbone
from selfsup.models.split_bn import SplitBatchNorm2d, bn_groups_set, convert_split_bn
from selfsup.models.teacher import EmbeddingTeacher, freeze_bn_statistics


def chunk_sizes(n, groups):
    """torch.tensor_split's sizes, written out: the first n % groups one larger."""
    return [n // groups + (1 if g < n % groups else 0) for g in range(groups)]


def reference_bn(x, bn, groups):
    """Per-chunk batch normalisation written out, and the running statistics
    a momentum update from the first chunk gives (unbiased variance)."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    outs = []
    for part in torch.split(x, chunk_sizes(x.shape[0], groups)):
        mean, var = part.mean(dims, keepdim=True), part.var(dims, unbiased=False, keepdim=True)
        outs.append((part - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape))
    first = x[: chunk_sizes(x.shape[0], groups)[0]]
    m = bn.momentum
    running_mean = (1 - m) * bn.running_mean + m * first.mean(dims)
    running_var = (1 - m) * bn.running_var + m * first.var(dims, unbiased=True)
    return torch.cat(outs), running_mean, running_var


def shifted_batch(shape, groups, seed=0):
    """A batch whose chunks differ in mean and scale, so grouping matters."""
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    for g, part in enumerate(torch.split(x, chunk_sizes(shape[0], groups))):
        part.mul_(1 + g).add_(g - 2)
    return x


def nontrivial(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize(
    "shape,groups,channels_last",
    [
        ((16, 4, 3, 3), 4, False),  # even chunks
        ((30, 4, 3, 3), 8, False),  # uneven: 4 4 4 4 4 4 3 3
        ((30, 4, 3, 3), 8, True),  # channels_last memory
        ((14, 6), 4, False),  # BatchNorm1d on (N, C): 4 4 3 3
    ],
)
def test_split_bn_matches_per_chunk_statistics(shape, groups, channels_last):
    torch.manual_seed(1)
    bn = nontrivial(nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1]))
    split = convert_split_bn(copy.deepcopy(bn), groups)
    x = shifted_batch(shape, groups)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected, running_mean, running_var = reference_bn(x, bn, groups)
    y = split.train()(x)
    assert torch.allclose(y, expected, atol=1e-5)
    assert not torch.allclose(y, bn.train()(x), atol=1e-2)  # whole-batch BN differs
    assert torch.allclose(split.running_mean, running_mean, atol=1e-6)
    assert torch.allclose(split.running_var, running_var, atol=1e-5)
    assert int(split.num_batches_tracked) == 1  # one update per forward
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_split_bn_gradients_are_those_of_bn_applied_chunk_by_chunk():
    bn = nontrivial(nn.BatchNorm2d(4))
    split = convert_split_bn(copy.deepcopy(bn), 8)
    x = shifted_batch((30, 4, 3, 3), 8).requires_grad_(True)
    weights = torch.randn(30, 4, 3, 3)
    (split(x) * weights).sum().backward()
    got = x.grad.clone(), split.weight.grad.clone(), split.bias.grad.clone()
    x.grad = None
    chunked = torch.cat([bn(part) for part in torch.tensor_split(x, 8)])
    (chunked * weights).sum().backward()
    for a, b in zip(got, (x.grad, bn.weight.grad, bn.bias.grad)):
        assert torch.allclose(a, b, atol=1e-4)


def test_groups_never_hold_fewer_than_two_samples():
    bn = nontrivial(nn.BatchNorm2d(4))
    split = convert_split_bn(copy.deepcopy(bn), 8)
    x = shifted_batch((5, 4, 3, 3), 2)
    expected, _, _ = reference_bn(x, bn, 2)  # 5 // 2: two groups (3 and 2)
    assert torch.allclose(split(x), expected, atol=1e-5)


def test_eval_mode_is_plain_bn_and_updates_nothing():
    bn = nontrivial(nn.BatchNorm2d(4)).eval()
    split = convert_split_bn(copy.deepcopy(bn), 4).eval()
    x = shifted_batch((16, 4, 3, 3), 4)
    assert torch.equal(split(x), bn(x))
    assert torch.equal(split.running_mean, bn.running_mean) and int(split.num_batches_tracked) == 0


def test_groups_apply_only_inside_bn_groups_set():
    bn = nontrivial(nn.BatchNorm2d(4))
    net = convert_split_bn(nn.Sequential(copy.deepcopy(bn)))
    x = shifted_batch((16, 4, 3, 3), 4)
    assert torch.allclose(net(x), copy.deepcopy(bn)(x), atol=1e-6)  # groups=1: whole-batch BN
    with bn_groups_set(net, 4):
        y = net(x)
    assert torch.allclose(y, reference_bn(x, bn, 4)[0], atol=1e-5)
    assert net[0].groups == 1


def test_frozen_statistics_normalise_per_group_and_stay_unchanged():
    bn = nontrivial(nn.BatchNorm2d(4))
    split = convert_split_bn(freeze_bn_statistics(copy.deepcopy(bn)), 4)
    x = shifted_batch((16, 4, 3, 3), 4)
    with torch.no_grad():
        y = split.train()(x)
    assert torch.allclose(y, reference_bn(x, bn, 4)[0], atol=1e-5)
    assert torch.equal(split.running_mean, bn.running_mean) and torch.equal(split.running_var, bn.running_var)


def test_timm_batchnorm_act_keeps_its_activation():
    from timm.layers import BatchNormAct2d

    bn = nontrivial(BatchNormAct2d(4, act_layer=nn.SiLU))
    split = convert_split_bn(copy.deepcopy(bn), 4)
    assert isinstance(split, SplitBatchNorm2d) and isinstance(split.act, nn.SiLU)
    x = shifted_batch((16, 4, 3, 3), 4)
    assert torch.allclose(copy.deepcopy(split).eval()(x), copy.deepcopy(bn).eval()(x), atol=1e-6)
    assert torch.allclose(split(x), F.silu(reference_bn(x, bn, 4)[0]), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "efficientb0"])
def test_state_dict_keys_and_shapes_do_not_change(arch):
    plain, _ = create_backbone(arch, True)
    converted = convert_split_bn(copy.deepcopy(plain), 8)
    assert any(isinstance(m, SplitBatchNorm2d) for m in converted.modules())
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SplitBatchNorm2d)
        for m in converted.modules()
    )
    a, b = plain.state_dict(), converted.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    converted.load_state_dict(a)  # strict
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(converted.eval()(x), plain.eval()(x), atol=1e-5)


def test_unknown_batchnorm_variants_are_refused_in_one_line():
    class OddNorm(nn.BatchNorm2d):
        pass

    with pytest.raises(UserError, match="OddNorm.*--bn-splits 1"):
        convert_split_bn(nn.Sequential(OddNorm(4)), 4)


# -- the methods -------------------------------------------------------------


def tiny_encoder(dim=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, dim),
        nn.BatchNorm1d(dim),
    )


def in_groups(encoder, x, groups):
    """The loop the split layers replace: the encoder once per chunk."""
    return torch.cat([encoder(part) for part in torch.tensor_split(x, groups)])


def test_moco_step_equals_the_per_group_loop():
    plain_q = tiny_encoder()
    model = MoCo(copy.deepcopy(plain_q), dim=8, K=16, m=0.9, T=0.2, bn_splits=4).train()
    plain_k = copy.deepcopy(plain_q)
    with torch.no_grad():  # the key encoder starts elsewhere, so the momentum update matters
        for p, r in zip(model.encoder_k.parameters(), plain_k.parameters()):
            p.add_(0.1)
            r.add_(0.1)
    torch.manual_seed(3)
    im_q, im_k = torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8) * 2
    queue = model.queue.clone()
    # Reference: the old loop, on unconverted copies.
    q = F.normalize(in_groups(plain_q, im_q, 4), dim=1)
    with torch.no_grad():
        for p_k, p_q in zip(plain_k.parameters(), plain_q.parameters()):
            p_k.mul_(0.9).add_(0.1 * p_q)
        torch.manual_seed(11)
        perm = torch.randperm(16)
        k = F.normalize(in_groups(plain_k, im_k[perm], 4), dim=1)[torch.argsort(perm)]
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.2
    expected = -F.log_softmax(logits, 1)[:, 0].mean()
    torch.manual_seed(11)
    out = model(im_q, im_k)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    out["loss"].backward()
    expected.backward()
    assert torch.allclose(model.encoder_q[0].weight.grad, plain_q[0].weight.grad, atol=1e-5)
    assert type(model.encoder_k[1]) is SplitBatchNorm2d
    assert list(model.state_dict()) == list(MoCo(tiny_encoder(), dim=8, K=16, bn_splits=1).state_dict())


def test_disco_teacher_normalises_per_group_without_moving():
    plain_t = tiny_encoder(seed=1)
    for m in plain_t.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            nontrivial(m)
    before = copy.deepcopy(plain_t.state_dict())
    model = DisCo(tiny_encoder(), EmbeddingTeacher(copy.deepcopy(plain_t)), dim=8, K=16, T=0.2, bn_splits=4).train()
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        expected = F.normalize(in_groups(freeze_bn_statistics(plain_t).train(), x, 4), dim=1)
    assert torch.allclose(model.embed_teacher(x), expected, atol=1e-5)
    after = model.teacher.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.endswith("num_batches_tracked"))
