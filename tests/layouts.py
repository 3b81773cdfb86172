"""Checkpoints in the official release layouts, built from random weights.

Key names and shapes are spelled out here, independently of selfsup's own
model code (torchvision ResNets for the trunks), so a loader that drifts
from the official layout fails these tests."""
import os
import pickle

import numpy as np
import torch
import torchvision


def _trunk(arch):
    if arch == "resnet50w2":  # SwAV's RN50x2 trunk; widths checked in test_backbones
        from selfsup.backbones import create_backbone
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
        sd.update({"fc.0.weight": torch.randn(hidden, feat) * 0.01, "fc.0.bias": torch.zeros(hidden),
                   "fc.2.weight": torch.randn(128, hidden) * 0.01, "fc.2.bias": torch.zeros(128)})
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
    sd.update({
        "projection_head.0.weight": torch.randn(hidden, feat) * 0.01, "projection_head.0.bias": torch.zeros(hidden),
        "projection_head.1.weight": torch.ones(hidden), "projection_head.1.bias": torch.zeros(hidden),
        "projection_head.1.running_mean": torch.zeros(hidden), "projection_head.1.running_var": torch.ones(hidden),
        "projection_head.1.num_batches_tracked": torch.tensor(0),
        "projection_head.3.weight": torch.randn(128, hidden) * 0.01, "projection_head.3.bias": torch.zeros(128),
    })
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
    rng = np.random.default_rng(0)
    folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
    os.makedirs(os.path.join(root, folder))
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def dump(fname, n):
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(rng.integers(0, classes, n))}
        with open(os.path.join(root, folder, fname), "wb") as f:
            pickle.dump(d, f)
        return d
    if name == "cifar10":
        parts = [dump(f"data_batch_{i}", n_train // 5) for i in range(1, 6)]
        test = dump("test_batch", n_test)
        meta = {b"label_names": [f"c{i}".encode() for i in range(classes)]}
        with open(os.path.join(root, folder, "batches.meta"), "wb") as f:
            pickle.dump(meta, f)
    else:
        parts = [dump("train", n_train)]
        test = dump("test", n_test)
        with open(os.path.join(root, folder, "meta"), "wb") as f:
            pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}, f)
    return parts, test, folder
