"""DINO, MoCo-v3 and DINOv2 release files as DisCo teachers.

Each release layout is built here from the official model definitions' key
names and shapes (tests/layouts.py, random weights), loaded as a teacher, and
its embedding compared with the release's own forward written out below (or,
for XCiT, timm's model loaded through timm's own converter); then one DisCo
step trains a transformer student from it."""

import importlib.util
import os

import layouts as L
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import REPO, TINY_PRETRAIN, run

from selfsup.core.errors import UserError
from selfsup.models.teacher import load_teacher

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- the releases' forwards, written out ------------------------------------------


def ref_vit(sd, x, heads, patch):
    """dino / moco-v3 / dinov2 vision_transformer.py at the native size: patch
    conv, [cls] + pos_embed (DINOv2 registers after cls, without position),
    pre-norm blocks (LayerScale where the file has ls*.gamma), final norm, cls."""
    dim = sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["pos_embed"]
    if "register_tokens" in sd:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(len(x), -1, -1), t[:, 1:]], 1)
    n, tokens, _ = t.shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = lambda k: sd[f"blocks.{i}.{k}"]  # noqa: E731
        h = F.layer_norm(t, (dim,), b("norm1.weight"), b("norm1.bias"), eps=1e-6)
        q, k, v = (
            F.linear(h, b("attn.qkv.weight"), b("attn.qkv.bias"))
            .reshape(n, tokens, 3, heads, dim // heads)
            .permute(2, 0, 3, 1, 4)
        )
        a = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        o = F.linear((a @ v).transpose(1, 2).reshape(n, tokens, dim), b("attn.proj.weight"), b("attn.proj.bias"))
        t = t + (o * b("ls1.gamma") if f"blocks.{i}.ls1.gamma" in sd else o)
        h = F.layer_norm(t, (dim,), b("norm2.weight"), b("norm2.bias"), eps=1e-6)
        m = F.linear(
            F.gelu(F.linear(h, b("mlp.fc1.weight"), b("mlp.fc1.bias"))), b("mlp.fc2.weight"), b("mlp.fc2.bias")
        )
        t = t + (m * b("ls2.gamma") if f"blocks.{i}.ls2.gamma" in sd else m)
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]


def ref_resnet50(sd, x):
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model.load_state_dict(sd)
    return model.eval()(x)


def ref_seq(sd, x, ops):
    """An MLP spelled out: ("lin", i), ("bn", i) in eval mode, "relu", "gelu"."""
    for op in ops:
        if op == "relu":
            x = F.relu(x)
        elif op == "gelu":
            x = F.gelu(x)
        elif op[0] == "lin":
            x = F.linear(x, sd[f"{op[1]}.weight"], sd.get(f"{op[1]}.bias"))
        else:
            x = F.batch_norm(
                x,
                sd[f"{op[1]}.running_mean"],
                sd[f"{op[1]}.running_var"],
                sd.get(f"{op[1]}.weight"),
                sd.get(f"{op[1]}.bias"),
                False,
                0.0,
                1e-5,
            )
    return x


DINO_HEAD = [("lin", 0), "gelu", ("lin", 2), "gelu", ("lin", 4)]
DINO_HEAD_BN = [("lin", 0), ("bn", 1), "gelu", ("lin", 3), ("bn", 4), "gelu", ("lin", 6)]
MOCOV3_VIT_HEAD = [("lin", 0), ("bn", 1), "relu", ("lin", 3), ("bn", 4), "relu", ("lin", 6), ("bn", 7)]
MOCOV3_RN_FC = [("lin", 0), ("bn", 1), "relu", ("lin", 3), ("bn", 4)]


def sub(sd, prefix):
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def ref_xcit(sd, x):
    import timm
    from timm.models.xcit import checkpoint_filter_fn

    model = timm.create_model("xcit_small_12_p16_224", pretrained=False, num_classes=0)
    model.load_state_dict(checkpoint_filter_fn(dict(sd), model))
    return model.eval()(x)


# name -> (arch, file contents, reference embedding at `size`, size, DisCo crop)
def _cases():
    return {
        "dino_vits16": ("dino_vits16", lambda: L.vit_state(16), lambda f, x: ref_vit(f, x, 6, 16), 224, 32),
        "dino_vits16_full": (
            "dino_vits16",
            lambda: L.dino_full_checkpoint(L.vit_state(16), 384),
            lambda f, x: ref_seq(
                sub(f["teacher"], "head.mlp."), ref_vit(sub(f["teacher"], "backbone."), x, 6, 16), DINO_HEAD
            ),
            224,
            32,
        ),
        "dino_vits8": ("dino_vits8", lambda: L.vit_state(8), lambda f, x: ref_vit(f, x, 6, 8), 224, 32),
        "dino_xcit_small_12_p16": ("dino_xcit_small_12_p16", L.xcit_small_12_p16_state, ref_xcit, 224, 32),
        "dino_resnet50": ("dino_resnet50", L.resnet50_state, ref_resnet50, 64, 32),
        "dino_resnet50_full": (
            "dino_resnet50",
            lambda: L.dino_full_checkpoint(L.resnet50_state(), 2048, bn=True, ddp_teacher=True),
            lambda f, x: ref_seq(
                sub(f["teacher"], "module.head.mlp."),
                ref_resnet50(sub(f["teacher"], "module.backbone."), x),
                DINO_HEAD_BN,
            ),
            64,
            32,
        ),
        "mocov3_vit_small": (
            "mocov3_vit_small",
            lambda: L.mocov3_checkpoint(vit=True),
            lambda f, x: ref_seq(
                sub(f["state_dict"], "module.base_encoder.head."),
                ref_vit(sub(f["state_dict"], "module.base_encoder."), x, 12, 16),
                MOCOV3_VIT_HEAD,
            ),
            224,
            32,
        ),
        "mocov3_resnet50": (
            "mocov3_resnet50",
            lambda: L.mocov3_checkpoint(vit=False),
            lambda f, x: ref_seq(
                sub(f["state_dict"], "module.base_encoder.fc."),
                ref_resnet50(
                    {k: v for k, v in sub(f["state_dict"], "module.base_encoder.").items() if not k.startswith("fc.")},
                    x,
                ),
                MOCOV3_RN_FC,
            ),
            64,
            32,
        ),
        "dinov2_vits14": (
            "dinov2_vits14",
            lambda: L.vit_state(14, 518, layerscale=True, mask_token=True),
            lambda f, x: ref_vit(f, x, 6, 14),
            518,
            28,
        ),
        "dinov2_vits14_reg": (
            "dinov2_vits14_reg",
            lambda: L.vit_state(14, 518, layerscale=True, mask_token=True, registers=4),
            lambda f, x: ref_vit(f, x, 6, 14),
            518,
            28,
        ),
    }


CASES = _cases()
WIDTHS = {
    "dino_vits16": 384,
    "dino_vits16_full": 256,
    "dino_vits8": 384,
    "dino_xcit_small_12_p16": 384,
    "dino_resnet50": 2048,
    "dino_resnet50_full": 256,
    "mocov3_vit_small": 256,
    "mocov3_resnet50": 256,
    "dinov2_vits14": 384,
    "dinov2_vits14_reg": 384,
}
# The transformer students each teacher family trains here (small-image variants).
STUDENTS = {
    "dino_vits16": "vit_tiny",
    "dino_vits8": "xcit_tiny",
    "dino_xcit_small_12_p16": "xcit_tiny_12_p16_224",
    "dinov2_vits14": "resnet18d",
    "dinov2_vits14_reg": "xcit_tiny_12_p8_224",
    "dino_vits16_full": "vit_tiny_patch16_224",
}


def disco_args(argv):
    spec = importlib.util.spec_from_file_location("disco_main", os.path.join(REPO, "DisCo", "main.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parse_args(argv)


@pytest.mark.parametrize("name", list(CASES))
def test_release_teacher_embeds_as_the_release_and_trains_a_student(name, tmp_path, tiny_data):
    from selfsup.methods.disco import build_disco

    arch, make, reference, size, crop = CASES[name]
    torch.manual_seed(0)
    contents = make()
    path = str(tmp_path / f"{name}.pth")
    torch.save(contents, path)

    teacher = load_teacher(arch, path)
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = F.normalize(reference(contents, x), dim=1)
        got = teacher(x)
    assert got.shape == (1, WIDTHS[name])
    assert torch.allclose(got, expected, atol=2e-4), (got - expected).abs().max()

    student = STUDENTS.get(name, "vit_tiny")
    args = disco_args(
        [
            tiny_data,
            "-a",
            student,
            "--teacher_arch",
            arch,
            "--teacher",
            path,
            "--mlp",
            "--image-size",
            str(crop),
            "--small-images",
            "-b",
            "4",
            "--moco-k",
            "8",
            "--bn-splits",
            "2",
        ]
    )
    model = build_disco(args).train()
    assert args.moco_dim == WIDTHS[name]  # sized to the teacher
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    out = model(torch.randn(4, 3, crop, crop), torch.randn(4, 3, crop, crop))
    assert torch.isfinite(out["loss"]) and out["loss_mse"] > 0
    out["loss"].backward()
    opt.step()
    after = model.teacher.state_dict()  # (BatchNorm's step counters do count on, as torch's BN does)
    assert all(torch.equal(v, after[k]) for k, v in before.items() if not k.endswith("num_batches_tracked"))
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_vit_tiny_at_224_px_patch_16_distils_from_dino_vits16(tmp_path, tiny_data):
    from selfsup.methods.disco import build_disco

    path = str(tmp_path / "dino_deitsmall16_pretrain.pth")
    torch.save(L.vit_state(16), path)
    args = disco_args(
        [
            tiny_data,
            "-a",
            "ViT-Tiny",
            "--teacher_arch",
            "dino_vits16",
            "--teacher",
            path,
            "--mlp",
            "-b",
            "2",
            "--moco-k",
            "4",
            "--bn-splits",
            "1",
        ]
    )
    model = build_disco(args).train()
    assert model.encoder_q.patch_embed.proj.kernel_size == (16, 16) and args.image_size == 224
    out = model(torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224))
    out["loss"].backward()
    assert model.encoder_q.head[2].out_features == 384


def test_other_layouts_fail_in_one_line_naming_the_keys(tmp_path):
    torch.save(L.vit_state(8), tmp_path / "vits8.pth")
    with pytest.raises(UserError) as e:
        load_teacher("dino_vits16", str(tmp_path / "vits8.pth"))
    msg = str(e.value)
    assert "\n" not in msg and "patch_embed.proj.weight" in msg and "dino_vits16" in msg
    torch.save(L.moco_v2_checkpoint("resnet50", queue=8), tmp_path / "mocov2.pth")
    with pytest.raises(UserError) as e:
        load_teacher("dino_resnet50", str(tmp_path / "mocov2.pth"))
    assert "\n" not in str(e.value) and "encoder_q.conv1.weight" in str(e.value)
    with pytest.raises(UserError) as e:
        load_teacher("mocov3_resnet50", str(tmp_path / "mocov2.pth"))
    assert "module.base_encoder" in str(e.value) and "module.encoder_q.conv1.weight" in str(e.value)


def test_explicit_moco_dim_must_equal_the_teacher_width(tmp_path, tiny_data):
    from selfsup.methods.disco import build_disco

    torch.save(L.resnet50_state(), tmp_path / "dino_resnet50_pretrain.pth")
    args = disco_args(
        [
            tiny_data,
            "-a",
            "resnet18",
            "--teacher_arch",
            "dino_resnet50",
            "--teacher",
            str(tmp_path / "dino_resnet50_pretrain.pth"),
            "--moco-dim",
            "128",
            "--image-size",
            "32",
            "--small-images",
            "-b",
            "4",
            "--moco-k",
            "8",
        ]
    )
    with pytest.raises(UserError, match="2048 dimensions.*--moco-dim 128"):
        build_disco(args)


def test_readme_command_distils_a_timm_student_from_a_dino_release_file(tmp_path, tiny_data):
    """README.md's command, made tiny: its log says the width it took."""
    release = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(L.vit_state(16), release)
    readme = open(os.path.join(REPO, "README.md")).read()
    line = next(ln for ln in readme.splitlines() if "--teacher_arch dino_vits16" in ln)
    cmd = line.strip().rstrip("\\").strip().replace("/path/to/dino_deitsmall16_pretrain.pth", str(release))
    cmd = cmd.replace("/path/to/imagenet", tiny_data).replace("python ", "python3 ", 1)  # the test interpreter
    result = run(
        f"{cmd} {TINY_PRETRAIN} --image-size 32 --ckpt-dir {tmp_path / 'ckpt'} --moco-k 32 -b 16 --resume ''",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "=> --moco-dim 384" in result.stdout
    assert os.path.exists(tmp_path / "ckpt" / "checkpoint_0000.pth.tar")
