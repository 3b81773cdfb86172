"""DisCo and RKD compute what the original's scripts computed: the teacher's
BatchNorm on batch statistics, RKD with weights 1/1 on the first view, the
DeepCluster-v2/SeLa-v2 teachers, the `--hidden 0` head layout, EfficientNet-B5.

Every expected value is written out here from the original's definitions
(orig DisCo/main_moco_distill_rkd.py:457-474, DisCo/loss.py RkdDistance/RKdAngle)."""

import copy
import importlib.util
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO, TINY_PRETRAIN, run
from layouts import deepcluster_v2_release_state, moco_v2_checkpoint, sela_v2_release_state

from selfsup.methods.disco import DisCo, MoCoRKD
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


# -- RKD written out -------------------------------------------------------


def smooth_l1(a, b):
    x = (a - b).abs()
    return torch.where(x < 1, 0.5 * x**2, x - 0.5).mean()


def distances(e):
    """Euclidean distances, zero on the diagonal (kept out of the sqrt, whose
    gradient at 0 is not finite)."""
    off = 1 - torch.eye(len(e))
    sq = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    return (sq * off + (1 - off)).sqrt() * off


def rkd_distance_ref(s, t):
    ds, dt = distances(s), distances(t)
    return smooth_l1(ds / ds[ds > 0].mean(), dt / dt[dt > 0].mean())


def cosines(e):
    v = e[None, :, :] - e[:, None, :]  # v[i, j] = e_j - e_i
    v = v / v.norm(dim=2, keepdim=True).clamp_min(1e-12)  # zero vectors (j = i) stay zero
    return torch.einsum("ijc,ikc->ijk", v, v).reshape(-1)


def rkd_angle_ref(s, t):
    return smooth_l1(cosines(s), cosines(t))


def reference_parts(model, teacher_net, x1, x2, groups=1):
    """q1, q2, k and the teacher's t1, t2 the way the original computed them:
    student and teacher with BatchNorm on (per-GPU) batch statistics."""

    def per_group(net, x):
        return F.normalize(torch.cat([net(p) for p in x.tensor_split(groups)]), dim=1)

    q1, q2 = per_group(model.encoder_q, x1), per_group(model.encoder_q, x2)
    with torch.no_grad():
        k = F.normalize(model.encoder_k(x2), dim=1)
        teacher_net = teacher_net.train()
        t1, t2 = per_group(teacher_net, x1), per_group(teacher_net, x2)
    return q1, q2, k, t1, t2


def info_nce_ref(q, k, queue, T):
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / T
    return -F.log_softmax(logits, 1)[:, 0].mean()


@pytest.mark.parametrize("use_mse", [False, True])
def test_rkd_loss_is_the_originals(use_mse):
    """loss = ce + dist + angle (+ MSE(q1, t1) + MSE(q2, t2), summed, with --use-mse),
    the RKD terms between the student's and the teacher's view-1 embeddings."""
    teacher_net = tiny_net(seed=1)
    model = MoCoRKD(
        tiny_net(seed=0),
        EmbeddingTeacher(copy.deepcopy(teacher_net)),
        use_mse=use_mse,
        dim=8,
        K=16,
        m=1.0,
        T=0.2,
        bn_splits=1,
    ).train()
    torch.manual_seed(5)
    x1, x2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8) * 2 + 1
    queue = model.queue.clone()
    q1, q2, k, t1, t2 = reference_parts(model, teacher_net, x1, x2)
    nce = info_nce_ref(q1, k, queue, 0.2)
    dist, angle = rkd_distance_ref(q1, t1), rkd_angle_ref(q1, t1)
    mse = ((q1 - t1) ** 2).sum() + ((q2 - t2) ** 2).sum()
    out = model(x1, x2)
    assert torch.allclose(out["loss_rkd_dist"], dist, atol=1e-5)
    assert torch.allclose(out["loss_rkd_angle"], angle, atol=1e-5)
    expected = nce + dist + angle + (mse if use_mse else 0.0)
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    assert ("loss_mse" in out) == use_mse
    if use_mse:
        assert torch.allclose(out["loss_mse"], mse, atol=1e-5)
    # The gradient is that of the written-out loss.
    out["loss"].backward()
    g = model.encoder_q[-1].weight.grad.clone()
    model.zero_grad()
    expected.backward()
    assert torch.allclose(g, model.encoder_q[-1].weight.grad, atol=1e-5)


def test_rkd_papers_weights_on_both_views_stay_one_flag_away():
    teacher_net = tiny_net(seed=1)
    model = MoCoRKD(
        tiny_net(seed=0),
        EmbeddingTeacher(copy.deepcopy(teacher_net)),
        dist_weight=25.0,
        angle_weight=50.0,
        views=2,
        dim=8,
        K=16,
        m=1.0,
        T=0.2,
        bn_splits=1,
    ).train()
    torch.manual_seed(6)
    x1, x2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    q1, q2, _, t1, t2 = reference_parts(model, teacher_net, x1, x2)
    out = model(x1, x2)
    assert torch.allclose(out["loss_rkd_dist"], 25 * (rkd_distance_ref(q1, t1) + rkd_distance_ref(q2, t2)), atol=1e-4)
    assert torch.allclose(out["loss_rkd_angle"], 50 * (rkd_angle_ref(q1, t1) + rkd_angle_ref(q2, t2)), atol=1e-4)


def test_rkd_in_one_process_relates_samples_within_each_emulated_gpu():
    """bn_splits=2, batch 8: two GPUs of 4 samples, each computing RKD over its
    own 4; DDP averaged their gradients, i.e. the mean of the two losses."""
    teacher_net = tiny_net(seed=1)
    model = MoCoRKD(
        tiny_net(seed=0), EmbeddingTeacher(copy.deepcopy(teacher_net)), dim=8, K=16, m=1.0, T=0.2, bn_splits=2
    ).train()
    torch.manual_seed(7)
    x1, x2 = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    q1, _, _, t1, _ = reference_parts(model, teacher_net, x1, x2, groups=2)
    halves = list(zip(q1.tensor_split(2), t1.tensor_split(2)))
    out = model(x1, x2)
    assert torch.allclose(out["loss_rkd_dist"], sum(rkd_distance_ref(s, t) for s, t in halves) / 2, atol=1e-5)
    assert torch.allclose(out["loss_rkd_angle"], sum(rkd_angle_ref(s, t) for s, t in halves) / 2, atol=1e-5)
    assert not torch.allclose(out["loss_rkd_dist"], rkd_distance_ref(q1, t1), atol=1e-4)


# -- the teacher's BatchNorm -----------------------------------------------


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(REPO, "DisCo", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_defaults_are_the_originals():
    disco = _script("main").parse_args(["--teacher", "t.pth"])
    rkd = _script("main_moco_distill_rkd").parse_args(["--teacher", "t.pth"])
    assert disco.teacher_bn == "train" and rkd.teacher_bn == "train"
    assert (rkd.rkd_dist_weight, rkd.rkd_angle_weight, rkd.rkd_views) == (1.0, 1.0, 1)
    assert _script("main").parse_args(["--teacher", "t.pth", "--teacher-bn", "eval"]).teacher_bn == "eval"


def _bn_with_batch_statistics(x, bn):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]


def test_default_teacher_runs_on_batch_statistics_and_keeps_its_running_ones():
    net = tiny_net(seed=1)
    bn = net[1]
    bn.running_mean.fill_(3.0)  # far from any batch's statistics, so the modes differ
    bn.running_var.fill_(5.0)
    model = DisCo(tiny_net(seed=0), EmbeddingTeacher(net), dim=8, K=16, T=0.2, bn_splits=1).train()
    assert model.teacher.training
    x = torch.randn(6, 3, 8, 8) * 2 + 0.5
    with torch.no_grad():
        h = _bn_with_batch_statistics(net[0](x), bn).relu().mean(dim=(2, 3))
        expected = F.normalize(net[5](h), dim=1)
        running = F.normalize(nn.Sequential(*net).eval()(x), dim=1)
        model.train()
        got = model.embed_teacher(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, running, atol=1e-3)
    # The original updated the running averages, but never read them; ours stay as loaded.
    assert torch.equal(bn.running_mean, torch.full((4,), 3.0)) and torch.equal(bn.running_var, torch.full((4,), 5.0))


def test_swav_layout_teacher_runs_on_batch_statistics_by_default(tmp_path):
    from layouts import swav_release_state

    from selfsup.models.teacher import load_swav_teacher

    path = tmp_path / "swav_r18.pth.tar"
    state = swav_release_state("resnet18", 64, prototypes=10)
    for k in state:  # non-trivial running statistics, so eval and train mode differ
        if k.endswith("running_mean"):
            state[k] = torch.randn_like(state[k])
    torch.save(state, path)
    teacher = load_swav_teacher("resnet18", str(path))
    model = DisCo(tiny_net(out=128), teacher, dim=128, K=16, T=0.2, bn_splits=1).train()
    # Reference: the same weights with every BN made statistics-free (batch statistics in any mode).
    ref = copy.deepcopy(teacher.model).eval()
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.embed_teacher(x), ref.embed(x), atol=1e-5)


# -- DeepCluster-v2 and SeLa-v2 teachers -----------------------------------


@pytest.mark.parametrize(
    "arch,make",
    [
        ("DCresnet50", lambda: deepcluster_v2_release_state((30, 20, 10))),
        ("SELAresnet50", lambda: sela_v2_release_state(30)),
    ],
)
def test_deepcluster_and_sela_releases_teach_a_disco_student(tmp_path, arch, make):
    state = make()
    path = tmp_path / f"{arch}.pth.tar"
    torch.save(state, path)
    teacher = load_teacher(arch, str(path))
    loaded = {
        k[len("model.backbone.") :] if k.startswith("model.backbone.") else k[len("model.") :]: v
        for k, v in teacher.state_dict().items()
    }
    trunk_and_head = [k[len("module.") :] for k in state if not k.startswith("module.prototypes.")]
    assert sorted(loaded) == sorted(trunk_and_head)
    assert all(torch.equal(loaded[k], state[f"module.{k}"]) for k in trunk_and_head)
    # One DisCo step against it; the teacher embeds into 128-d unit vectors after hidden 2048.
    assert teacher.model.projection_head[0].weight.shape == (2048, 2048)
    student = tiny_net(out=128)
    model = DisCo(student, teacher, dim=128, K=16, T=0.2, bn_splits=1).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = student[-1].weight.clone()
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    assert torch.isfinite(out["loss"]) and out["loss_mse"] > 0
    assert not torch.equal(student[-1].weight, before)


def test_deepcluster_teacher_through_the_script(tmp_path, tiny_data):
    path = tmp_path / "deepclusterv2_800ep_pretrain.pth.tar"
    torch.save(deepcluster_v2_release_state((30, 30, 30)), path)
    out = tmp_path / "run"
    result = run(
        f"python3 main.py -a resnet18 --mlp --teacher_arch DCresnet50 --teacher {path} {TINY_PRETRAIN} "
        f"-b 20 --ckpt-dir {out} {tiny_data}",
        cwd="DisCo",
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "loss_mse" in result.stdout and (out / "checkpoint_0000.pth.tar").exists()


# -- --hidden 0: the original's Sequential(Linear) head ---------------------


def test_hidden_0_writes_fc0_and_both_head_layouts_load(tmp_path, tiny_data):
    out = tmp_path / "moco"
    result = run(
        f"python3 main_moco.py -a resnet18 --mlp --hidden 0 {TINY_PRETRAIN} -b 20 --ckpt-dir {out} "
        f"--resume '' {tiny_data}",
        cwd="moco",
    )
    assert result.returncode == 0, result.stdout[-2000:]
    new_path = out / "checkpoint_0000.pth.tar"
    ckpt = torch.load(new_path, weights_only=False)
    head = sorted(k for k in ckpt["state_dict"] if k.startswith("module.encoder_q.fc"))
    assert head == ["module.encoder_q.fc.0.bias", "module.encoder_q.fc.0.weight"]
    assert ckpt["state_dict"]["module.encoder_q.fc.0.weight"].shape == (128, 512)
    # Our earlier layout of the same weights: a plain Linear under fc.*.
    old = copy.deepcopy(ckpt)
    old["state_dict"] = {k.replace(".fc.0.", ".fc."): v for k, v in ckpt["state_dict"].items()}
    old_path = tmp_path / "old_fc.pth.tar"
    torch.save(old, old_path)

    sd = ckpt["state_dict"]
    w, b = sd["module.encoder_q.fc.0.weight"], sd["module.encoder_q.fc.0.bias"]
    x = torch.randn(3, 3, 16, 16)
    from selfsup.engine.lincls import build_classifier, load_pretrained

    embeddings = []
    for path in (new_path, old_path):
        teacher = load_teacher("resnet18", str(path)).eval()
        with torch.no_grad():
            trunk_only = copy.deepcopy(teacher.encoder)
            trunk_only.fc = nn.Identity()
            pooled = trunk_only(x)
            assert torch.allclose(teacher(x), F.normalize(pooled @ w.t() + b, dim=1), atol=1e-5)
            embeddings.append(teacher(x))
        clf = build_classifier("resnet18", 10, small_images=True)
        load_pretrained(clf, str(path), "resnet18")
        trunk = {
            k[len("module.encoder_q.") :]: v
            for k, v in sd.items()
            if k.startswith("module.encoder_q.") and ".fc" not in k
        }
        assert all(torch.equal(clf.state_dict()[k], v) for k, v in trunk.items())
    assert torch.allclose(embeddings[0], embeddings[1])


def test_a_moco_teacher_with_the_originals_hidden_0_head_loads(tmp_path):
    ckpt = moco_v2_checkpoint("resnet18", hidden=512)
    sd = ckpt["state_dict"]
    for enc in ("encoder_q", "encoder_k"):
        for k in ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"):
            sd.pop(f"module.{enc}.{k}")
        sd[f"module.{enc}.fc.0.weight"] = torch.randn(128, 512) * 0.01
        sd[f"module.{enc}.fc.0.bias"] = torch.randn(128) * 0.01
    path = tmp_path / "orig_hidden0.pth.tar"
    torch.save(ckpt, path)
    teacher = load_teacher("resnet18", str(path))
    fc = teacher.encoder.fc
    assert isinstance(fc, nn.Sequential) and len(fc) == 1
    assert torch.equal(fc[0].weight, sd["module.encoder_q.fc.0.weight"])


# -- EfficientNet-B5 -------------------------------------------------------


def test_efficientb5_is_timms_b5_with_the_originals_image_size():
    import timm

    from selfsup.models.backbones import create_backbone, default_image_size

    model, dim = create_backbone("efficientb5")
    reference = timm.create_model("efficientnet_b5", pretrained=False)
    assert dim == reference.num_features == 2048
    trunk = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("classifier.")}
    assert {k: v.shape for k, v in model.state_dict().items()} == trunk
    assert default_image_size("efficientb5") == 456 and default_image_size("efficientb0") == 224
