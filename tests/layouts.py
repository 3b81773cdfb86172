"""Checkpoints in the official release layouts, built from random weights.

Key names and shapes are spelled out here, independently of selfsup's own
model code (torchvision ResNets for the trunks), so a loader that drifts
from the official layout fails these tests."""

import hashlib
import os
import pickle

import numpy as np
import torch
import torchvision


def _trunk(arch):
    if arch == "resnet50w2":  # SwAV's RN50x2 trunk; widths checked in test_backbones
        from selfsup.models.backbones import create_backbone

        model, _ = create_backbone("resnet50w2")
    else:
        model = getattr(torchvision.models, arch)(weights=None)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _feat(arch):
    return {"resnet18": 512, "resnet34": 512, "resnet50w2": 4096}.get(arch, 2048)


def moco_v2_checkpoint(arch="resnet50", hidden=None, queue=256):
    """The MoCo-v2 training checkpoint layout (facebookresearch/moco)."""
    feat = _feat(arch)
    hidden = hidden or feat

    def encoder():
        sd = {k: v.clone() for k, v in _trunk(arch).items()}
        sd.update(
            {
                "fc.0.weight": torch.randn(hidden, feat) * 0.01,
                "fc.0.bias": torch.zeros(hidden),
                "fc.2.weight": torch.randn(128, hidden) * 0.01,
                "fc.2.bias": torch.zeros(128),
            }
        )
        return sd

    state = {f"module.encoder_q.{k}": v for k, v in encoder().items()}
    state.update({f"module.encoder_k.{k}": v for k, v in encoder().items()})
    state["module.queue"] = torch.nn.functional.normalize(torch.randn(128, queue), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": arch, "state_dict": state, "optimizer": {}}


def swav_release_state(arch="resnet50", hidden=2048, prototypes=3000):
    """The official SwAV release: a plain state dict with the `module.` prefix.

    `prototypes` a list: several prototype heads, as fb-swav src/resnet50.py's
    MultiPrototypes names them (`prototypes.prototypes{i}.weight`), which is
    how main_deepclusterv2.py (--nmb_prototypes 3000 3000 3000) saves the
    DeepCluster-v2 release."""
    feat = _feat(arch)
    sd = dict(_trunk(arch))
    sd.update(
        {
            "projection_head.0.weight": torch.randn(hidden, feat) * 0.01,
            "projection_head.0.bias": torch.zeros(hidden),
            "projection_head.1.weight": torch.ones(hidden),
            "projection_head.1.bias": torch.zeros(hidden),
            "projection_head.1.running_mean": torch.zeros(hidden),
            "projection_head.1.running_var": torch.ones(hidden),
            "projection_head.1.num_batches_tracked": torch.tensor(0),
            "projection_head.3.weight": torch.randn(128, hidden) * 0.01,
            "projection_head.3.bias": torch.zeros(128),
        }
    )
    if isinstance(prototypes, (list, tuple)):
        sd.update({f"prototypes.prototypes{i}.weight": torch.randn(k, 128) for i, k in enumerate(prototypes)})
    else:
        sd["prototypes.weight"] = torch.randn(prototypes, 128)
    return {f"module.{k}": v for k, v in sd.items()}


def deepcluster_v2_release_state(prototypes=(3000, 3000, 3000)):
    """deepclusterv2_800ep_pretrain.pth.tar: SwAV's R-50 with hidden_mlp 2048,
    feat_dim 128 and three prototype heads (fb-swav main_deepclusterv2.py)."""
    return swav_release_state("resnet50", 2048, list(prototypes))


def sela_v2_release_state(prototypes=3000):
    """selav2_400ep_pretrain.pth.tar: the same model definition. fb-swav ships no
    SeLa-v2 script, so its prototype layout is not documented; one head here
    (the DeepCluster-v2 test covers several)."""
    return swav_release_state("resnet50", 2048, prototypes)


def write_cifar(root, name, n_train=20, n_test=10, classes=10):
    """Fake CIFAR python files in the authors' layout. Their pickles come from
    Python 2, whose str keys torchvision reads back as str (encoding latin1):
    written here with str keys and names, and plain ints as labels. Not the
    official files: torchvision's md5 check refuses them unless a test calls
    pretend_official_cifar (or reads them under --unsafe-load)."""
    rng = np.random.default_rng(0)
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    os.makedirs(os.path.join(root, folder))
    key = "labels" if name == "cifar10" else "fine_labels"

    def dump(fname, n):
        d = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: [int(y) for y in rng.integers(0, classes, n)],
        }
        with open(os.path.join(root, folder, fname), "wb") as f:
            pickle.dump(d, f)
        return d

    if name == "cifar10":
        parts = [dump(f"data_batch_{i}", n_train // 5) for i in range(1, 6)]
        test = dump("test_batch", n_test)
        meta = {"label_names": [f"c{i}" for i in range(classes)]}
        with open(os.path.join(root, folder, "batches.meta"), "wb") as f:
            pickle.dump(meta, f)
    else:
        parts = [dump("train", n_train)]
        test = dump("test", n_test)
        with open(os.path.join(root, folder, "meta"), "wb") as f:
            pickle.dump({"fine_label_names": [f"c{i}" for i in range(classes)]}, f)
    return parts, test, folder


def pretend_official_cifar(monkeypatch, folder, name):
    """Let torchvision's CIFAR class take the files in `folder` (as they are
    now) for the official ones: its md5 lists set to the files' own md5s."""
    dataset = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]

    def md5(file_name):
        with open(os.path.join(folder, file_name), "rb") as f:
            return hashlib.md5(f.read()).hexdigest()

    monkeypatch.setattr(dataset, "train_list", [[f, md5(f)] for f, _ in dataset.train_list])
    monkeypatch.setattr(dataset, "test_list", [[f, md5(f)] for f, _ in dataset.test_list])
    monkeypatch.setattr(dataset, "meta", dict(dataset.meta, md5=md5(dataset.meta["filename"])))


# -- transformer and post-MoCo-v2 releases (DINO, MoCo-v3, DINOv2) -----------------
# Key names and shapes as the official model definitions write them:
# dino/vision_transformer.py (the DeiT/timm ViT layout), moco-v3 vits.py and
# moco_v3/builder.py (_build_mlp), dinov2/models/vision_transformer.py
# (block_chunks=0, LayerScale `ls1.gamma`), xcit's xcit.py (`pos_embeder`,
# fused class-attention `qkv`).


def _w(*shape, std=0.02):
    return torch.randn(*shape) * std


def _ln(dim):
    return {"weight": 1 + _w(dim, std=0.1), "bias": _w(dim)}


def vit_state(patch=16, img=224, dim=384, depth=12, layerscale=False, registers=0, mask_token=False):
    """ViT-S trunk: DINO's / MoCo-v3's (layerscale False) or DINOv2's."""
    grid = img // patch
    sd = {
        "cls_token": _w(1, 1, dim),
        "pos_embed": _w(1, grid * grid + 1, dim),
        "patch_embed.proj.weight": _w(dim, 3, patch, patch),
        "patch_embed.proj.bias": _w(dim),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd.update({f"{b}{norm}.{k}": v for k, v in _ln(dim).items()})
        sd.update(
            {
                f"{b}attn.qkv.weight": _w(3 * dim, dim),
                f"{b}attn.qkv.bias": _w(3 * dim),
                f"{b}attn.proj.weight": _w(dim, dim),
                f"{b}attn.proj.bias": _w(dim),
                f"{b}mlp.fc1.weight": _w(4 * dim, dim),
                f"{b}mlp.fc1.bias": _w(4 * dim),
                f"{b}mlp.fc2.weight": _w(dim, 4 * dim),
                f"{b}mlp.fc2.bias": _w(dim),
            }
        )
        if layerscale:
            sd.update({f"{b}ls1.gamma": 0.1 + _w(dim, std=0.05), f"{b}ls2.gamma": 0.1 + _w(dim, std=0.05)})
    sd.update({f"norm.{k}": v for k, v in _ln(dim).items()})
    if mask_token:
        sd["mask_token"] = torch.zeros(1, dim)
    if registers:
        sd["register_tokens"] = _w(1, registers, dim)
    return sd


def resnet50_state():
    sd = _trunk("resnet50")
    for k, v in sd.items():  # non-trivial BN statistics, so eval mode is really tested
        if k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand_like(v)
        elif k.endswith("running_mean"):
            sd[k] = 0.1 * torch.randn_like(v)
    return sd


def xcit_small_12_p16_state():
    """XCiT-S12/16 under the official names: timm's model of it (random
    weights) with timm's two renames undone (timm: `pos_embed.*`, and
    q/k/v split in the class-attention blocks; official: `pos_embeder.*`,
    one `qkv`)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("xcit_small_12_p16_224", pretrained=False, num_classes=0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in list(sd.items()):
        if k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand_like(v)
    out = {}
    for k, v in sd.items():
        if k.startswith("pos_embed."):
            out["pos_embeder." + k[len("pos_embed.") :]] = v
        elif ".attn.q." in k and k.startswith("cls_attn_blocks."):
            stem, kind = k.split(".attn.q.")
            out[f"{stem}.attn.qkv.{kind}"] = torch.cat([sd[f"{stem}.attn.{p}.{kind}"] for p in "qkv"])
        elif (".attn.k." in k or ".attn.v." in k) and k.startswith("cls_attn_blocks."):
            continue
        else:
            out[k] = v
    return out


def dino_head_state(in_dim, bn=False, hidden=2048, bottleneck=256, out_dim=65536):
    """dino/vision_transformer.py DINOHead (nlayers 3): mlp = Linear, [BN], GELU,
    Linear, [BN], GELU, Linear; last_layer = weight_norm(Linear(256, out_dim))."""
    sd, i = {}, 0
    for d_in, d_out, last in ((in_dim, hidden, False), (hidden, hidden, False), (hidden, bottleneck, True)):
        sd[f"mlp.{i}.weight"], sd[f"mlp.{i}.bias"] = _w(d_out, d_in, std=d_in**-0.5), _w(d_out)
        i += 1
        if not last:
            if bn:
                sd.update(
                    {
                        f"mlp.{i}.weight": 1 + _w(d_out, std=0.1),
                        f"mlp.{i}.bias": _w(d_out),
                        f"mlp.{i}.running_mean": _w(d_out),
                        f"mlp.{i}.running_var": 0.5 + torch.rand(d_out),
                        f"mlp.{i}.num_batches_tracked": torch.tensor(100),
                    }
                )
                i += 1
            i += 1  # GELU
    sd["last_layer.weight_g"] = torch.ones(out_dim, 1)
    sd["last_layer.weight_v"] = _w(out_dim, bottleneck)
    return sd


def dino_full_checkpoint(backbone, in_dim, bn=False, ddp_teacher=False):
    """DINO's checkpoint.pth: student (DDP: `module.`), teacher (DDP only when
    the model has BatchNorm), optimizer, epoch, args, dino_loss."""
    import argparse

    head = dino_head_state(in_dim, bn)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher.update({f"head.{k}": v for k, v in head.items()})
    student = {f"module.{k}": v for k, v in teacher.items()}  # the same tensors: stored once
    if ddp_teacher:
        teacher = {f"module.{k}": v for k, v in teacher.items()}
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": {},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", out_dim=65536, use_bn_in_head=bn),
        "dino_loss": {"center": torch.zeros(1, 65536)},
    }


def _mocov3_mlp(num_layers, d_in, d_mlp, d_out, last_bn):
    """moco-v3 builder.py _build_mlp: Linear(bias=False), BN, ReLU, ..., last
    Linear, then BatchNorm1d(affine=False) if last_bn."""
    sd, i = {}, 0
    for layer in range(num_layers):
        a = d_in if layer == 0 else d_mlp
        b = d_out if layer == num_layers - 1 else d_mlp
        sd[f"{i}.weight"] = _w(b, a, std=a**-0.5)
        i += 1
        if layer < num_layers - 1:
            sd.update(
                {
                    f"{i}.weight": 1 + _w(b, std=0.1),
                    f"{i}.bias": _w(b),
                    f"{i}.running_mean": _w(b),
                    f"{i}.running_var": 0.5 + torch.rand(b),
                    f"{i}.num_batches_tracked": torch.tensor(10),
                }
            )
            i += 2  # BN, ReLU
        elif last_bn:
            sd.update(
                {
                    f"{i}.running_mean": _w(b),
                    f"{i}.running_var": 0.5 + torch.rand(b),
                    f"{i}.num_batches_tracked": torch.tensor(10),
                }
            )
    return sd


def mocov3_checkpoint(vit):
    """moco-v3 main_moco.py's checkpoint: {'epoch', 'arch', 'state_dict', 'optimizer',
    'scaler'}; base and momentum encoders (trunk + projector in `head`/`fc`),
    and the predictor. ViT: 3-layer projector and 2-layer predictor with last BN;
    ResNet: 2-layer projector, predictor without last BN (dim 256, mlp_dim 4096)."""
    trunk, slot = (vit_state(), "head") if vit else (resnet50_state(), "fc")
    feat = 384 if vit else 2048
    encoder = dict(trunk)
    encoder.update({f"{slot}.{k}": v for k, v in _mocov3_mlp(3 if vit else 2, feat, 4096, 256, True).items()})
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state.update({f"module.momentum_encoder.{k}": v for k, v in encoder.items()})  # shared: stored once
    state.update({f"module.predictor.{k}": v for k, v in _mocov3_mlp(2, 256, 4096, 256, vit).items()})
    return {
        "epoch": 300,
        "arch": "vit_small" if vit else "resnet50",
        "state_dict": state,
        "optimizer": {},
        "scaler": {},
    }
