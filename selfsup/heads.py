"""Projection heads, sized by the original's ``--mlp`` and ``--hidden`` flags."""
import torch.nn as nn

from .errors import UserError


def projection_head(feat_dim: int, out_dim: int = 128, mlp: bool = False, hidden: int = -1) -> nn.Module:
    """The MoCo-v2 projection head that replaces a backbone's classifier.

    Without ``mlp``: one Linear(feat_dim, out_dim) (MoCo v1).
    With ``mlp``: ``hidden`` -1 -> Linear(feat, feat), ReLU, Linear(feat, out);
    0 -> a single Linear(feat, out); N -> Linear(feat, N), ReLU, Linear(N, out).
    Keys are ``<head>.weight`` for a single layer, ``<head>.0.*``/``<head>.2.*``
    for the MLP, as in the original checkpoints.
    """
    if hidden < -1:
        raise UserError(f"--hidden {hidden}: expected -1 (feature width), 0 (no hidden layer) or a positive width")
    if not mlp or hidden == 0:
        return nn.Linear(feat_dim, out_dim)
    width = feat_dim if hidden == -1 else hidden
    return nn.Sequential(nn.Linear(feat_dim, width), nn.ReLU(inplace=True), nn.Linear(width, out_dim))
