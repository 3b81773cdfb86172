"""Frozen self-supervised teachers for DisCo, RKD and SwAV + DisCo.

One wrapper, EmbeddingTeacher, for every family: images -> the embedding
after the teacher's own projection head, L2-normalised (SwAV + DisCo's
teacher may return the raw projection instead). It holds no training
logic: the method holding it decides its BatchNorm mode (DisCo's
``--teacher-bn``; SwAV + DisCo keeps it in eval mode). The families:
- MoCo-v2 checkpoints (ours, the official release, DisCo students): the
  query encoder ``module.encoder_q.*``; the head's shape is read from the
  checkpoint, so any ``--mlp``/``--hidden`` setting loads;
- SwAV-layout checkpoints (``--teacher_arch SWAVresnet50``, ``resnet50w2``,
  ``DCresnet50``, ``SELAresnet50``): the official SwAV, DeepCluster-v2 and
  SeLa-v2 releases or our own SwAV runs (layout: selfsup.models.swav);
- the DINO, MoCo-v3 and DINOv2 releases (``--teacher_arch dino_vits16``,
  ``mocov3_resnet50``, ``dinov2_vits14``, ...), via selfsup.models.releases;
- any of these exported by tools/export.py --with-head (a safetensors file,
  selfsup.models.exported): the same backbone and head, so the same embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models.backbones import create_backbone, set_head
from selfsup.models.exported import load_exported_encoder
from selfsup.models.heads import projection_head
from selfsup.models.releases import is_release, load_release_encoder
from selfsup.models.swav import load_swav_encoder

# SwAV-layout releases: SwAV's R-50 and R-50x2, and DeepCluster-v2 / SeLa-v2
# (released from the SwAV repo with the same model definition; orig DisCo/main.py:193-201).
SWAV_TEACHERS = {"SWAVresnet50", "resnet50w2", "DCresnet50", "SELAresnet50"}


class EmbeddingTeacher(nn.Module):
    """A frozen encoder's embedding: ``encoder(x)``, L2-normalised in fp32
    when `normalize` (the embedding an encoder returns as it is otherwise).

    `slot` names the encoder's attribute, which is part of DisCo's
    checkpoint layout (``module.teacher.<slot>.*``): ``encoder`` for MoCo
    and release teachers, ``model`` for SwAV-layout ones. A SwAV-layout
    encoder normalises inside its own head (SwAVModel.normalize, as the
    official model), so its wrapper does not normalise again."""

    def __init__(self, encoder: nn.Module, normalize: bool = True, slot: str = "encoder"):
        super().__init__()
        self.slot, self.normalize = slot, bool(normalize)
        self.add_module(slot, encoder)
        for p in encoder.parameters():
            p.requires_grad = False

    @property
    def net(self) -> nn.Module:
        """The wrapped encoder, whatever its slot."""
        return getattr(self, self.slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return F.normalize(z.float(), dim=1) if self.normalize else z


def _head_from_state(state, head_name, feat_dim, path):
    """The projection head a MoCo checkpoint was trained with: a plain Linear
    (``<head>.*``: MoCo v1, and our ``--hidden 0`` checkpoints before they
    took the original's layout), a one-layer Sequential (``<head>.0.*`` only:
    the original's ``--mlp --hidden 0``) or the two-layer MLP."""
    if f"{head_name}.weight" in state:
        return projection_head(feat_dim, state[f"{head_name}.weight"].shape[0], mlp=False)
    if f"{head_name}.0.weight" in state and f"{head_name}.2.weight" in state:
        hidden, out = state[f"{head_name}.0.weight"].shape[0], state[f"{head_name}.2.weight"].shape[0]
        return projection_head(feat_dim, out, mlp=True, hidden=hidden)
    if f"{head_name}.0.weight" in state:
        return projection_head(feat_dim, state[f"{head_name}.0.weight"].shape[0], mlp=True, hidden=0)
    raise UserError(
        f"teacher '{path}' has no projection head under '{head_name}.' "
        "(expected a MoCo pretraining checkpoint with module.encoder_q.*)"
    )


def load_swav_teacher(arch: str, path: str, **options: Any) -> EmbeddingTeacher:
    """A frozen SwAV-layout teacher in eval mode; `options` are those of
    selfsup.models.swav.load_swav_encoder (which says which files it reads).
    normalize=False: the raw projection, the teacher of the original
    main_swav_distill.py."""
    encoder = load_swav_encoder(arch, path, **options)
    return EmbeddingTeacher(encoder, normalize=False, slot="model").eval()


def load_moco_teacher(arch: str, path: str, small_images: bool | None = None) -> EmbeddingTeacher:
    ckpt = ck.load_file(path, "--teacher checkpoint")
    state = ck.state_dict_of(ckpt, path)
    for prefix in ("module.encoder_q.", "encoder_q.", "module.encoder.", "encoder."):
        sub = ck.strip_prefix(state, prefix)
        if sub:
            state = sub
            break
    else:
        raise UserError(
            f"teacher '{path}' has no 'module.encoder_q.*' keys (expected a MoCo-v2 checkpoint; "
            "for SwAV-layout weights use --teacher_arch SWAVresnet50, resnet50w2, DCresnet50 "
            "or SELAresnet50)"
        )
    if small_images is None:
        small_images = ck.small_images_of(ckpt)
    backbone, feat_dim = create_backbone(arch, small_images)
    head_name = backbone.head_name
    head_weight = state.get(f"{head_name}.weight", state.get(f"{head_name}.0.weight"))
    if head_weight is not None and head_weight.shape[1] != feat_dim:
        raise ck.arch_mismatch(
            "teacher",
            path,
            "--teacher_arch",
            arch,
            f"head input {head_weight.shape[1]} vs feature width {feat_dim}",
            ckpt,
        )
    encoder = set_head(backbone, _head_from_state(state, head_name, feat_dim, path))
    ck.load_into(encoder, state, path, arch, flag="--teacher_arch")
    return EmbeddingTeacher(encoder)


def load_teacher(arch: str, path: str, small_images: bool | None = None, nmb_prototypes: int = 0) -> EmbeddingTeacher:
    """A frozen teacher of `arch` with the weights of `path`, in eval mode."""
    if not path:
        raise UserError("--teacher PATH is required (a MoCo-v2, SwAV, DINO, MoCo-v3 or DINOv2 file of --teacher_arch)")
    if ck.is_safetensors(path):  # tools/export.py --with-head, of any family: backbone + head, one layout
        encoder, _ = load_exported_encoder(
            path, arch, with_head=True, what="--teacher file", arch_flag="--teacher_arch"
        )
        teacher = EmbeddingTeacher(encoder)
    elif arch in SWAV_TEACHERS:
        teacher = load_swav_teacher(arch, path, nmb_prototypes=nmb_prototypes, small_images=small_images)
    elif is_release(arch):  # built at the release's own stem: small_images does not apply
        encoder, release, layout = load_release_encoder(arch, path)
        teacher = EmbeddingTeacher(encoder)
        teacher.release, teacher.layout = release, layout
    else:
        teacher = load_moco_teacher(arch, path, small_images)
    for p in teacher.parameters():
        p.requires_grad = False
    return teacher.eval()


def freeze_bn_statistics(module: nn.Module) -> nn.Module:
    """BN layers keep using batch statistics in train mode but stop updating
    their running averages (momentum 0), so the teacher's state never changes.

    The original did update them (its teacher's BN ran in train mode, and BN
    updates running averages under torch.no_grad too), but nothing ever read
    them: the teacher only ran in train mode, on batch statistics, and the
    teacher weights of its checkpoints were never loaded again (a resume
    reloads --teacher). Freezing them therefore computes the same, and keeps
    the teacher equal to its file for --teacher-bn eval or a later reuse."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return module
