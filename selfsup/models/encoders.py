"""Encoders built from flags or from checkpoints: the query encoder of a
pretraining run (backbone plus projection head in its head slot), and the
backbone of any checkpoint this project writes."""

from __future__ import annotations

import argparse

from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models.backbones import canonical_arch, create_backbone, set_head
from selfsup.models.heads import projection_head


def build_query_encoder(args: argparse.Namespace) -> nn.Module:
    """Backbone with the projection head of --mlp/--hidden in its head slot."""
    backbone, feat_dim = create_backbone(args.arch, bool(args.small_images))
    return set_head(backbone, projection_head(feat_dim, args.moco_dim, args.mlp, args.hidden))


def load_backbone(arch: str, path: str, small_images: bool | None = None) -> nn.Module:
    """A backbone (head = Identity) with the weights of any of our checkpoints:
    MoCo/DisCo pretraining, SwAV, or linear evaluation. `small_images=None`
    takes the stem the checkpoint was trained with."""
    ckpt = ck.load_file(path)
    saved_arch = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if small_images is None:
        small_images = ck.small_images_of(ckpt)
    model, _ = create_backbone(arch, small_images)
    state = ck.backbone_state(ck.state_dict_of(ckpt, path), model.head_name)
    try:
        return ck.load_into(model, state, path, arch)
    except UserError as exc:
        if saved_arch and canonical_arch(arch) != saved_arch:
            raise UserError(f"checkpoint '{path}' was trained with arch '{saved_arch}', not -a {arch}") from None
        raise exc
