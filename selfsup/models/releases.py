"""Teachers from the official DINO, MoCo-v3 and DINOv2 releases.

Each release is mapped onto the timm (or torchvision) model that computes
what the release's own model definition does, and its projection head (if
the file has one) is put in that model's head slot. The teacher's embedding
is then the L2-normalised output of ``encoder(x)`` (selfsup.models.teacher's
EmbeddingTeacher), as for the MoCo-v2 teachers of the paper. docs/teachers.md
has the table and the reasons for each choice of embedding.

- DINO (facebookresearch/dino): the backbone-only files (``*_pretrain.pth``,
  a plain state dict of the trunk) embed into the backbone's feature (the
  class token after the last norm for ViT/XCiT, the pooled 2048-d feature for
  ResNet-50); the full training checkpoints (``*_full_checkpoint.pth``,
  ``{"student", "teacher", ...}``) embed into the ``teacher`` entry's DINO-head
  bottleneck (``head.mlp``, 256-d), which DINO itself L2-normalises before its
  prototype layer ``head.last_layer`` (dropped here).
- MoCo-v3 (facebookresearch/moco-v3): the training checkpoints
  (``module.base_encoder.*``, ``module.momentum_encoder.*``,
  ``module.predictor.*``) embed into the base encoder's projector output
  (256-d), the counterpart of MoCo-v2's ``encoder_q`` fc that DisCo matches;
  the momentum encoder and the predictor are dropped.
- DINOv2 (facebookresearch/dinov2): the backbone files embed into the
  normalised class token (``x_norm_clstoken``); ``mask_token`` is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models.backbones import create_backbone, image_size_error, probe_forward, set_head


@dataclass(frozen=True)
class Release:
    family: str  # "dino", "mocov3" or "dinov2"
    model: str  # timm name, or "resnet50" (torchvision, the zoo's)
    files: str  # the released file names, for messages and docs
    kwargs: dict = field(default_factory=dict)
    native: int = 224  # the resolution the release was trained at


RELEASES = {
    "dino_vits16": Release(
        "dino", "vit_small_patch16_224", "dino_deitsmall16_pretrain.pth, dino_deitsmall16_pretrain_full_checkpoint.pth"
    ),
    "dino_vits8": Release(
        "dino", "vit_small_patch8_224", "dino_deitsmall8_pretrain.pth, dino_deitsmall8_pretrain_full_checkpoint.pth"
    ),
    "dino_xcit_small_12_p16": Release(
        "dino",
        "xcit_small_12_p16_224",
        "dino_xcit_small_12_p16_pretrain.pth, dino_xcit_small_12_p16_pretrain_full_checkpoint.pth",
    ),
    "dino_resnet50": Release(
        "dino", "resnet50", "dino_resnet50_pretrain.pth, dino_resnet50_pretrain_full_checkpoint.pth"
    ),
    # moco-v3 vits.py: ViT-S with 12 heads (DeiT-S and timm's vit_small have 6).
    "mocov3_vit_small": Release("mocov3", "vit_small_patch16_224", "vit-s-300ep.pth.tar", {"num_heads": 12}),
    "mocov3_resnet50": Release("mocov3", "resnet50", "r-50-100ep.pth.tar, r-50-300ep.pth.tar, r-50-1000ep.pth.tar"),
    "dinov2_vits14": Release("dinov2", "vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth", native=518),
    "dinov2_vits14_reg": Release(
        "dinov2", "vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg4_pretrain.pth", native=518
    ),
}


def is_release(arch: str) -> bool:
    return arch in RELEASES


# -- the trunks ---------------------------------------------------------------


def build_trunk(release: Release) -> tuple[nn.Module, str]:
    """The release's trunk with its head slot empty (Identity): (model, head slot name)."""
    if release.model == "resnet50":
        model, _ = create_backbone("resnet50")
        return model, "fc"
    import timm  # optional and slow to import: only for the transformer releases

    kwargs = dict(release.kwargs)
    if release.model.startswith("vit_"):
        # Any crop size: the position embeddings are resampled (bicubic) off the
        # release's own resolution, as DINO/DINOv2 do for other sizes.
        kwargs["dynamic_img_size"] = True
    model = timm.create_model(release.model, pretrained=False, num_classes=0, **kwargs)
    model.head_name = "head"
    return model, "head"


def check_image_size(arch: str, size: int, arch_flag: str = "--teacher_arch", size_flag: str = "--image-size") -> None:
    """One line, before any work, when the release's trunk cannot take `size`
    px images (DINOv2's 14 px patches need a multiple of 14), instead of
    timm's assertion at the first step. ViT releases resample their position
    embeddings to any patch grid (build_trunk), so most sizes pass."""
    release = RELEASES[arch]
    if release.model == "resnet50":  # any size
        return
    problem = probe_forward(lambda: build_trunk(release)[0], size)
    if problem is not None:
        raise image_size_error(arch, size, problem, release.native, arch_flag, size_flag)


# -- key mapping: release names -> timm names ------------------------------------


def _xcit_keys(state):
    """Official XCiT names -> timm's: ``pos_embeder`` is ``pos_embed`` in timm,
    and the class-attention blocks' fused ``qkv`` is split into q, k, v."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(cls_attn_blocks\.\d+\.attn\.)qkv\.(weight|bias)$", k)
        if m:
            for part, chunk in zip("qkv", v.chunk(3, dim=0)):
                out[f"{m.group(1)}{part}.{m.group(2)}"] = chunk.contiguous()
        else:
            out[k.replace("pos_embeder.", "pos_embed.", 1) if k.startswith("pos_embeder.") else k] = v
    return out


def _dinov2_keys(state):
    """DINOv2 -> timm: no mask token (only used in training); with registers,
    timm keeps the class token's position embedding folded into the token,
    since its registers and class token both sit outside the patch grid."""
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        pos = state.pop("pos_embed")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
    return state


def trunk_keys(release: Release, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if release.model.startswith("xcit_"):
        return _xcit_keys(state)
    if release.family == "dinov2":
        return _dinov2_keys(state)
    return dict(state)


# -- projection heads rebuilt from their keys -----------------------------------


def mlp_from_state(state: dict[str, torch.Tensor], prefix: str, act: Callable[[], nn.Module]) -> nn.Sequential | None:
    """The nn.Sequential whose parameters are ``{prefix}{i}.*``: a 2-d weight
    is a Linear (biased if the file has the bias), running statistics a
    BatchNorm1d (affine if it has a weight), an index without parameters the
    activation. DINO's head uses GELU, MoCo-v3's MLPs ReLU."""
    idx = sorted(
        {
            int(k[len(prefix) :].split(".")[0])
            for k in state
            if k.startswith(prefix) and k[len(prefix) :].split(".")[0].isdigit()
        }
    )
    if not idx:
        return None
    layers = []
    for i in range(idx[-1] + 1):
        p = f"{prefix}{i}."
        w = state.get(p + "weight")
        if w is not None and w.dim() == 2:
            layers.append(nn.Linear(w.shape[1], w.shape[0], bias=p + "bias" in state))
        elif p + "running_mean" in state:
            layers.append(nn.BatchNorm1d(state[p + "running_mean"].shape[0], affine=w is not None))
        else:
            layers.append(act())
    return nn.Sequential(*layers)


class DinoBottleneck(nn.Module):
    """DINO's head up to its bottleneck: ``mlp`` (keys ``head.mlp.*``); the
    weight-normed prototype layer ``last_layer`` is left out."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


# -- reading a release file -----------------------------------------------------


def _prefixed(state, prefixes):
    for prefix in prefixes:
        sub = ck.strip_prefix(state, prefix)
        if sub:
            return sub, prefix
    return None, None


def _first_keys(state, n=3):
    keys = list(state)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def release_state(
    arch: str, release: Release, ckpt: Any, path: str
) -> tuple[dict[str, torch.Tensor], str, Callable[[dict[str, torch.Tensor]], nn.Module | None] | None]:
    """(trunk state, head state or None, head builder, layout description)."""
    if release.family == "mocov3":
        state = ck.state_dict_of(ckpt, path)
        base, _ = _prefixed(state, ("module.base_encoder.", "base_encoder."))
        if base is None:
            raise UserError(
                f"teacher '{path}' is not a MoCo-v3 training checkpoint for --teacher_arch {arch} "
                f"(no module.base_encoder.* keys; its first keys: {_first_keys(state)})"
            )
        return base, "module.base_encoder", lambda head_state: mlp_from_state(head_state, "", nn.ReLU)
    if release.family == "dino" and isinstance(ckpt, dict) and "teacher" in ckpt:
        teacher = ckpt["teacher"]
        if not isinstance(teacher, dict) or not all(torch.is_tensor(v) for v in teacher.values()):
            raise UserError(f"teacher '{path}': its 'teacher' entry is not a state dict")
        # DDP-wrapped (ResNet, XCiT: BatchNorm) or not (ViT): with or without `module.`.
        sub, _ = _prefixed(teacher, ("module.backbone.", "backbone."))
        head, _ = _prefixed(teacher, ("module.head.", "head."))
        if sub is None or head is None:
            raise UserError(
                f"teacher '{path}': its 'teacher' entry has no backbone.*/head.* keys "
                f"(expected DINO's training checkpoint; its first keys: {_first_keys(teacher)})"
            )
        sub.update({f"__head__.{k}": v for k, v in head.items() if not k.startswith("last_layer.")})
        return sub, "DINO training checkpoint ('teacher')", _dino_head
    state = ck.state_dict_of(ckpt, path)
    sub, _ = _prefixed(state, ("module.backbone.", "backbone.", "module."))
    return (sub or state), "backbone file", None


def _dino_head(head_state):
    if "mlp.weight" in head_state:  # nlayers=1: one Linear
        w = head_state["mlp.weight"]
        return DinoBottleneck(nn.Linear(w.shape[1], w.shape[0]))
    mlp = mlp_from_state(head_state, "mlp.", nn.GELU)
    return DinoBottleneck(mlp) if mlp is not None else None


def load_release_encoder(arch: str, path: str) -> tuple[nn.Module, Release, str]:
    """The encoder (trunk + projection head, or trunk alone) of a release file,
    its weights checked key by key against the mapped layout."""
    release = RELEASES[arch]
    ckpt = ck.load_file(path, "--teacher release file")
    state, layout, head_builder = release_state(arch, release, ckpt, path)
    model, slot = build_trunk(release)
    if release.family == "dino" and head_builder is not None:
        head_state = {k[len("__head__.") :]: v for k, v in state.items() if k.startswith("__head__.")}
        state = {k: v for k, v in state.items() if not k.startswith("__head__.")}
        state = trunk_keys(release, state)
        state.update({f"{slot}.{k}": v for k, v in head_state.items()})
        head = head_builder(head_state)
    elif head_builder is not None:  # MoCo-v3: the projector sits in the trunk's own head slot
        head_state = ck.strip_prefix(state, f"{slot}.")
        head = head_builder(head_state)
        if head is None:
            raise UserError(f"teacher '{path}' ({layout}) has no projector under '{slot}.*' for --teacher_arch {arch}")
        state = trunk_keys(release, state)
    else:
        state = trunk_keys(release, state)
        head = None
    if head is not None:
        set_head(model, head)
    problem = ck.describe_mismatch(model.state_dict(), state)
    if problem:
        raise UserError(
            f"teacher '{path}' is not a --teacher_arch {arch} release ({release.files}; read as {layout}): {problem}"
        )
    model.load_state_dict(state, strict=True)
    return model, release, layout
