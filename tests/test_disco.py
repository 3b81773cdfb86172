"""DisCo and RKD: losses, a frozen teacher, teacher checkpoint layouts."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import run
from layouts import moco_v2_checkpoint, swav_release_state

from selfsup.core.errors import UserError
from selfsup.methods.disco import DisCo, MoCoRKD
from selfsup.methods.losses import rkd_angle, rkd_distance
from selfsup.models.teacher import EmbeddingTeacher, load_teacher


def tiny_net(out=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, out),
    )


def make_disco(teacher_bn="eval", **kw):
    teacher = EmbeddingTeacher(tiny_net(seed=1))
    return DisCo(tiny_net(seed=0), teacher, dim=8, K=16, m=1.0, T=0.2, bn_splits=1, teacher_bn=teacher_bn, **kw)


def test_disco_loss_matches_an_independent_computation():
    model = make_disco().train()
    torch.manual_seed(5)
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    queue = model.queue.clone()
    # Independent computation from the parts' weights (m=1: the key encoder does not move).
    q1 = F.normalize(model.encoder_q(x1), dim=1)
    q2 = F.normalize(model.encoder_q(x2), dim=1)
    with torch.no_grad():
        k = F.normalize(model.encoder_k(x2), dim=1)
        t1 = F.normalize(model.teacher.encoder.eval()(x1), dim=1)
        t2 = F.normalize(model.teacher.encoder(x2), dim=1)
    logits = torch.cat([(q1 * k).sum(1, keepdim=True), q1 @ queue], 1) / 0.2
    nce = -F.log_softmax(logits, 1)[:, 0].mean()
    mse = ((q1 - t1) ** 2).sum() + ((q2 - t2) ** 2).sum()
    out = model(x1, x2)
    assert torch.allclose(out["loss_nce"], nce, atol=1e-5)
    assert torch.allclose(out["loss_mse"], mse, atol=1e-5)
    assert torch.allclose(out["loss"], nce + mse, atol=1e-5)


def test_summed_mse_is_per_emulated_gpu_in_one_process():
    # bn_splits=3 on a batch of 6: one process stands for 3 GPUs of 2 samples;
    # the original summed per GPU and DDP averaged, i.e. the sum over all / 3.
    teacher = EmbeddingTeacher(tiny_net(seed=1))
    torch.manual_seed(5)
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    outs = {}
    for splits in (1, 3):
        model = DisCo(tiny_net(seed=0), teacher, dim=8, K=16, m=1.0, T=0.2, bn_splits=splits, teacher_bn="eval").train()
        q1 = F.normalize(torch.cat([model.encoder_q(p) for p in x1.tensor_split(splits)]), dim=1)
        q2 = F.normalize(torch.cat([model.encoder_q(p) for p in x2.tensor_split(splits)]), dim=1)
        with torch.no_grad():
            t1, t2 = (F.normalize(model.teacher.encoder.eval()(x), dim=1) for x in (x1, x2))
        per_gpu = sum(
            ((a - b) ** 2).sum()
            for a, b in zip(
                q1.tensor_split(splits) + q2.tensor_split(splits), t1.tensor_split(splits) + t2.tensor_split(splits)
            )
        )
        outs[splits] = model(x1, x2)["loss_mse"]
        assert torch.allclose(outs[splits], per_gpu / splits, atol=1e-5), splits
    mean = make_disco(mse_reduction="mean").train()(x1, x2)["loss_mse"]
    assert mean < outs[3] < outs[1] * 2  # "mean" is not scaled by the groups


def test_only_mse_drops_the_contrastive_term():
    model = make_disco(only_mse=True).train()
    out = model(torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8))
    assert torch.allclose(out["loss"], out["loss_mse"])


@pytest.mark.parametrize("teacher_bn", ["eval", "train"])
def test_teacher_is_never_updated(teacher_bn):
    model = make_disco(teacher_bn).train()
    assert model.teacher.training == (teacher_bn == "train")
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    for _ in range(3):
        out = model(torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    for k, v in model.teacher.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not torch.equal(model.encoder_q[0].weight, tiny_net(seed=0)[0].weight)  # the student did learn


def test_teacher_bn_modes_differ_in_what_they_compute():
    x = torch.randn(6, 3, 8, 8) * 3 + 1
    ev, tr = make_disco("eval").train(), make_disco("train").train()
    assert not torch.allclose(ev.embed_teacher(x), tr.embed_teacher(x), atol=1e-4)


def test_rkd_is_zero_for_identical_embeddings_and_positive_otherwise():
    torch.manual_seed(0)
    t = F.normalize(torch.randn(7, 16), dim=1)
    assert rkd_distance(t.clone(), t) < 1e-6 and rkd_angle(t.clone(), t) < 1e-6
    s = F.normalize(torch.randn(7, 16), dim=1)
    assert rkd_distance(s, t) > 1e-3 and rkd_angle(s, t) > 1e-3
    # Distances are scale-free: a scaled copy of the teacher costs nothing.
    assert rkd_distance(3 * t, t) < 1e-6


def test_rkd_with_mse_adds_the_disco_term():
    teacher = EmbeddingTeacher(tiny_net(seed=1))
    model = MoCoRKD(tiny_net(), teacher, use_mse=True, dim=8, K=16, T=0.2, bn_splits=1).train()
    out = model(torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8))
    assert {"loss_rkd_dist", "loss_rkd_angle", "loss_mse", "loss_nce"} <= set(out)
    total = out["loss_nce"] + out["loss_rkd_dist"] + out["loss_rkd_angle"] + out["loss_mse"]
    assert torch.allclose(out["loss"], total, atol=1e-5)


def _check_loaded(teacher, source, prefix, drop=("prototypes.",)):
    loaded = teacher.state_dict()
    flat = {}
    for k, v in loaded.items():
        for p in ("encoder.", "backbone.", "model.backbone.", "model."):
            if k.startswith(p):
                k = k[len(p) :]
        flat[k] = v
    n = 0
    for k, v in source.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix) :]
        if name.startswith(drop) or name.endswith("num_batches_tracked"):
            continue
        match = [lk for lk in flat if lk.endswith(name)]
        assert match, f"{name} not loaded"
        assert torch.equal(flat[match[0]], v), name
        n += 1
    return n


def test_official_moco_v2_teacher_loads(tmp_path):
    ckpt = moco_v2_checkpoint("resnet50")
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(ckpt, path)
    teacher = load_teacher("resnet50", str(path))
    expected = [k for k in ckpt["state_dict"] if k.startswith("module.encoder_q.") and "num_batches" not in k]
    assert _check_loaded(teacher, ckpt["state_dict"], "module.encoder_q.") == len(expected)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 128) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("arch,hidden", [("SWAVresnet50", 2048), ("resnet50w2", 8192)])
@pytest.mark.parametrize("wrapped", [False, True], ids=["release", "training_ckpt"])
def test_official_swav_teachers_load(tmp_path, arch, hidden, wrapped):
    state = swav_release_state("resnet50" if arch == "SWAVresnet50" else "resnet50w2", hidden)
    path = tmp_path / "swav.pth.tar"
    torch.save({"epoch": 800, "state_dict": state, "optimizer": {}} if wrapped else state, path)
    teacher = load_teacher(arch, str(path))
    expected = [k for k in state if "num_batches" not in k and not k.startswith("module.prototypes")]
    assert _check_loaded(teacher, state, "module.") == len(expected)
    assert teacher(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_teacher_of_the_wrong_arch_fails_before_training(tmp_path, tiny_data):
    path = tmp_path / "r18.pth.tar"
    torch.save(moco_v2_checkpoint("resnet18", hidden=512), path)
    with pytest.raises(UserError, match="--teacher_arch resnet50"):
        load_teacher("resnet50", str(path))
    swav = tmp_path / "swav.pth.tar"
    torch.save(swav_release_state("resnet50", 2048), swav)
    with pytest.raises(UserError):
        load_teacher("resnet50w2", str(swav))
    result = run(
        f"python3 main.py -a resnet18 --mlp --moco-k 64 -b 8 --epochs 1 -j 0 --teacher_arch resnet34 "
        f"--teacher {path} {tiny_data}",
        cwd="DisCo",
    )
    assert result.returncode == 2
    errors = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--teacher_arch resnet34" in errors[0] and "Epoch" not in result.stdout


def test_disco_without_teacher_is_refused(tiny_data):
    result = run(f"python3 main.py -a resnet18 --mlp -b 8 --moco-k 64 {tiny_data}", cwd="DisCo")
    assert result.returncode == 2 and "--teacher PATH is required" in result.stdout


def test_teacher_bn_train_reaches_swav_teachers(tmp_path):
    path = tmp_path / "swav.pth.tar"
    torch.save(swav_release_state("resnet18", 64, prototypes=10), path)
    from selfsup.models.teacher import load_swav_teacher  # a small trunk in the SwAV layout keeps the test fast

    for mode, training in (("eval", False), ("train", True)):
        t = load_swav_teacher("resnet18", str(path))
        model = DisCo(tiny_net(out=128), t, dim=128, K=16, T=0.2, bn_splits=1, teacher_bn=mode).train()
        assert model.teacher.training == training
