"""SwAV testbed: Sinkhorn, loss, LARS, checkpoint layout, teacher loading,
restart, and two gloo processes under torchrun (CPU, tiny)."""

import csv
import importlib.util
import os
import socket
import sys

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import REPO, run

from selfsup.core.errors import UserError
from selfsup.engine.lars import LARS
from selfsup.engine.precision import Precision
from selfsup.methods.losses import sinkhorn, swav_loss
from selfsup.methods.swav import SwAVDisCo
from selfsup.models.swav import SwAVModel, official_state_dict
from selfsup.models.teacher import load_swav_teacher

# Small enough for a 2-core CPU: 16/8 px crops, ResNet-18 with the small stem.
TINY = [
    "--arch",
    "resnet18",
    "--small_images",
    "true",
    "--size_crops",
    "16",
    "8",
    "--nmb_crops",
    "2",
    "2",
    "--min_scale_crops",
    "0.14",
    "0.05",
    "--max_scale_crops",
    "1",
    "0.14",
    "--nmb_prototypes",
    "30",
    "--workers",
    "0",
    "--print_freq",
    "100",
    "--warmup_epochs",
    "0",
    "--base_lr",
    "0.6",
    "--final_lr",
    "0.0006",
    "--freeze_prototypes_niters",
    "2",
]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"swav_{name}", os.path.join(REPO, "swav-master", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(folder):
    with open(os.path.join(folder, "metrics.csv")) as f:
        return list(csv.DictReader(f))


# -- Sinkhorn and the loss ----------------------------------------------------


def test_sinkhorn_is_a_doubly_stochastic_assignment():
    torch.manual_seed(0)
    scores = (
        torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
        @ torch.nn.functional.normalize(torch.randn(30, 128), dim=1).t()
    )
    q = sinkhorn(scores, epsilon=0.05, iterations=50)
    assert q.shape == (64, 30) and (q >= 0).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)  # each sample: one unit
    torch.testing.assert_close(q.sum(dim=0), torch.full((30,), 64 / 30), atol=1e-3, rtol=0)  # equal partition
    # With SwAV's 3 iterations the rows are exact and the columns already close.
    q3 = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)
    assert (q3.sum(dim=0) - 64 / 30).abs().max() < 0.5
    # Codes are sharper than the softmax of the scores: the assignment follows the scores.
    assert (q3.argmax(dim=1) == scores.argmax(dim=1)).float().mean() > 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_sinkhorn_is_safe_with_large_low_precision_logits(dtype):
    torch.manual_seed(0)
    # exp(600 / 0.05) overflows any float; a naive exp(x/eps) gives inf/NaN here.
    scores = (torch.randn(32, 20) * 600).to(dtype)
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), atol=1e-4, rtol=0)
    assert q.sum(dim=0).max() <= 32 + 1e-3
    naive = torch.exp(scores.float() / 0.05)
    assert not torch.isfinite(naive).all()  # the case really is one that needs care


def test_swav_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SwAVModel("resnet18", hidden_mlp=64, feat_dim=16, nmb_prototypes=10, small_images=True)
    x = torch.randn(8, 3, 16, 16)
    crops = [x, x.flip(3) + 0.1 * torch.randn_like(x), torch.randn(8, 3, 8, 8)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(12):
        model.normalize_prototypes()
        emb, scores = model(crops)
        assert emb.shape == (24, 16) and scores.shape == (24, 10)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(24), atol=1e-5, rtol=0)
        loss, _ = swav_loss(emb, scores, 8, crops_for_assign=(0, 1), temperature=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_swav_loss_queue_is_filled_newest_first_and_used_once_full():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)  # 3 crops x 4 images
    protos = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    scores = emb @ protos.t()
    queue = torch.zeros(2, 8, 8)
    _, used = swav_loss(emb, scores, 4, (0, 1), queue=queue, prototypes=protos)
    assert not used
    assert torch.equal(queue[0, :4], emb[:4]) and torch.equal(queue[1, :4], emb[4:8])
    assert torch.all(queue[:, 4:] == 0)
    _, used = swav_loss(emb, scores, 4, (0, 1), queue=queue, prototypes=protos)
    assert not used  # the queue became full during this call
    _, used = swav_loss(emb, scores, 4, (0, 1), queue=queue, prototypes=protos)
    assert used


def test_lars_scales_each_gradient_by_its_trust_ratio():
    w = nn.Parameter(torch.full((4,), 2.0))
    w.grad = torch.full((4,), 0.5)
    lars = LARS(torch.optim.SGD([w], lr=1.0, momentum=0.0, weight_decay=0.1), trust_coefficient=0.001)
    lars.step()
    p_norm, g_norm = 4.0, 1.0
    rate = 0.001 * p_norm / (g_norm + p_norm * 0.1 + 1e-8)
    torch.testing.assert_close(w.detach(), torch.full((4,), 2.0 - rate * (0.5 + 0.1 * 2.0)))
    assert lars.param_groups[0]["weight_decay"] == 0.1  # restored after the step


def _lars_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    net.unused = nn.Parameter(torch.ones(2))  # no gradient at all: skipped
    net.dead = nn.Parameter(torch.ones(3))  # a zero gradient: plain step, no weight decay
    return net


def _lars_loss(net, x, prec):
    with prec.autocast():
        out = net(x) + 0.0 * net.dead
    return out.float().pow(2).mean()


def old_swav_step(net, lars, scaler, loss, frozen):
    """swav_train's step before LARS went through Precision: scaled backward,
    the frozen parameter's gradient dropped, the inner SGD's gradients
    unscaled, LARS's trust ratios by hand, SGD stepped (or skipped) by the
    scaler with its weight decay switched off, then the scale updated."""
    scaler.scale(loss).backward()
    frozen.grad = None
    if not scaler.is_enabled():
        lars.step()
        return
    scaler.unscale_(lars.optim)
    with torch.no_grad():
        for group in lars.optim.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                w_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                if w_norm != 0 and g_norm != 0:
                    rate = 0.001 * w_norm / (g_norm + w_norm * group["weight_decay"] + 1e-8)
                    p.grad.add_(p, alpha=group["weight_decay"]).mul_(rate)
    saved = [g["weight_decay"] for g in lars.optim.param_groups]
    for g in lars.optim.param_groups:
        g["weight_decay"] = 0.0
    scaler.step(lars.optim)
    for g, wd in zip(lars.optim.param_groups, saved):
        g["weight_decay"] = wd
    scaler.update()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_lars_through_precision_equals_the_old_manual_unscale_path(precision):
    x = torch.randn(8, 6)
    nets, opts, precs = [], [], []
    for _ in range(2):
        net = _lars_net()
        nets.append(net)
        opts.append(LARS(torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)))
        prec = Precision(precision, "cpu")
        # A first scale that overflows fp16: the scaler must skip that step and back off (fp16 only).
        prec.scaler = torch.amp.GradScaler(
            "cpu", init_scale=2.0**30, backoff_factor=2.0**-25, enabled=prec.scaler.is_enabled()
        )
        precs.append(prec)
    skipped = 0
    for _ in range(5):
        before = [p.detach().clone() for p in nets[0].parameters()]
        for net, lars, prec in zip(nets, opts, precs):
            lars.zero_grad(set_to_none=True)
            loss = _lars_loss(net, x, prec)
            frozen = net[2].bias
            if net is nets[0]:
                old_swav_step(net, lars, prec.scaler, loss, frozen)
            else:
                prec.backward_step(loss, lars, before_step=lambda f=frozen: setattr(f, "grad", None))
        skipped += all(torch.equal(a, b) for a, b in zip(before, nets[0].parameters()))
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a, b)
        assert opts[1].param_groups[0]["weight_decay"] == 1e-2
    assert precs[0].scaler.get_scale() == precs[1].scaler.get_scale()
    assert skipped == (1 if precision == "fp16" else 0)  # the overflowing first step, only with a scaler
    assert not torch.equal(nets[1][0].weight, _lars_net()[0].weight)  # the other steps moved the weights
    torch.testing.assert_close(nets[1][2].bias, _lars_net()[2].bias, rtol=0, atol=0)  # frozen throughout


# -- checkpoint layout and teachers -----------------------------------------


def test_checkpoint_layout_is_the_official_one():
    model = SwAVModel("resnet50", nmb_prototypes=3000)
    state = official_state_dict(model)
    trunk = {k[len("module.") :] for k in state if not k.startswith(("module.projection_head.", "module.prototypes."))}
    assert trunk == {k for k in torchvision.models.resnet50().state_dict() if not k.startswith("fc.")}
    assert state["module.projection_head.0.weight"].shape == (2048, 2048)
    assert state["module.projection_head.1.running_mean"].shape == (2048,)
    assert state["module.projection_head.3.weight"].shape == (128, 2048)
    assert state["module.prototypes.weight"].shape == (3000, 128)
    assert "module.prototypes.bias" not in state


def test_teacher_from_official_layout_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = SwAVModel("resnet50", nmb_prototypes=3000).eval()
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(official_state_dict(src), path)  # a plain state dict, as released
    teacher = load_swav_teacher("SWAVresnet50", str(path))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = src.embed(x)
    torch.testing.assert_close(teacher(x), expected)
    assert teacher(x).shape == (2, 128)
    method = SwAVDisCo(SwAVModel("resnet18", hidden_mlp=16, feat_dim=128, nmb_prototypes=5), teacher).train()
    assert method.model.training and not teacher.training  # SwAV + DisCo's .train() leaves the teacher in eval
    # Our own SwAV checkpoints ({"epoch", "state_dict", ...}) load the same way.
    torch.save({"epoch": 3, "state_dict": official_state_dict(src), "optimizer": {}}, tmp_path / "ours.pth")
    torch.testing.assert_close(load_swav_teacher("resnet50", str(tmp_path / "ours.pth"))(x), expected)


def test_teacher_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(official_state_dict(SwAVModel("resnet18", hidden_mlp=512, nmb_prototypes=10)), path)
    with pytest.raises(UserError) as exc:
        load_swav_teacher("resnet50", str(path))
    msg = str(exc.value)
    assert "\n" not in msg and "does not fit arch resnet50" in msg and "layer1.0.conv1.weight" in msg


def test_distill_without_teacher_is_a_one_line_error(tmp_path):
    result = run(f"python3 main_swav_distill.py --data_path {tmp_path} --dump_path {tmp_path}", cwd="swav-master")
    assert result.returncode == 2
    assert result.stdout.strip() == (
        "error: main_swav_distill.py needs the teacher checkpoint: --pretrained PATH (or --teacher)"
    )


# -- training runs -------------------------------------------------------------


def test_restart_resumes_epoch_and_queue(tiny_data, tmp_path, capsys):
    main_swav = _script("main_swav")
    dump = str(tmp_path / "run")
    # 60 images, 8 a step: 7 steps fill 56 of the 96 queue slots in an epoch, so
    # the queue is used in epoch 1 only if epoch 0's queue was restored.
    common = TINY + [
        "--data_path",
        os.path.join(tiny_data, "train"),
        "--dump_path",
        dump,
        "--batch_size",
        "8",
        "--queue_length",
        "96",
        "--epoch_queue_starts",
        "0",
        "--checkpoint_freq",
        "1",
    ]
    main_swav.main(common + ["--epochs", "1"])
    saved_queue = torch.load(os.path.join(dump, "queue0.pth"))["queue"]
    assert saved_queue.shape == (2, 96, 128)
    assert (saved_queue[:, :56].abs().sum(dim=2) > 0).all() and torch.all(saved_queue[:, 56:] == 0)
    ckpt = torch.load(os.path.join(dump, "checkpoint.pth.tar"), weights_only=False)
    assert ckpt["epoch"] == 1 and "module.conv1.weight" in ckpt["state_dict"]
    capsys.readouterr()

    model = main_swav.main(common + ["--epochs", "2"])
    out = capsys.readouterr().out
    assert "restarting from" in out and "at epoch 1" in out and "restored the queue" in out
    rows = read_metrics(dump)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert [r["queue"] for r in rows] == ["0", "1"]
    assert os.path.isfile(os.path.join(dump, "checkpoints", "ckp-1.pth"))
    final = torch.load(os.path.join(dump, "checkpoint.pth.tar"), weights_only=False)
    assert final["epoch"] == 2
    torch.testing.assert_close(final["state_dict"]["module.prototypes.weight"], model.prototypes.weight)


def test_two_gloo_processes_under_torchrun_stay_in_sync(tiny_data, tmp_path):
    dump = tmp_path / "ddp"
    args = " ".join(
        TINY
        + [
            "--data_path",
            os.path.join(tiny_data, "train"),
            "--dump_path",
            str(dump),
            "--batch_size",
            "4",
            "--epochs",
            "1",
            "--queue_length",
            "16",
            "--epoch_queue_starts",
            "0",
        ]
    )
    result = run(
        f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --master-port {free_port()} "
        f"tests/swav_rank_dump.py {args}"
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    s0, s1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    params = [k for k in s0 if "running_" not in k and not k.endswith("num_batches_tracked")]
    assert len(params) > 50
    for k in params:
        torch.testing.assert_close(s0[k], s1[k], atol=1e-6, rtol=0, msg=k)
    # Each rank keeps its own queue of its own embeddings.
    q0, q1 = torch.load(dump / "queue0.pth")["queue"], torch.load(dump / "queue1.pth")["queue"]
    assert q0.shape == (2, 8, 128) and not torch.equal(q0, q1)
