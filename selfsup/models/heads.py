"""Projection heads, sized by the original's ``--mlp`` and ``--hidden`` flags."""

import torch.nn as nn

from selfsup.core.errors import UserError


def projection_head(feat_dim: int, out_dim: int = 128, mlp: bool = False, hidden: int = -1) -> nn.Module:
    """The MoCo-v2 projection head that replaces a backbone's classifier.

    Without ``mlp``: one Linear(feat_dim, out_dim) (MoCo v1), keys ``<head>.*``.
    With ``mlp``: ``hidden`` -1 -> Linear(feat, feat), ReLU, Linear(feat, out);
    0 -> Sequential(Linear(feat, out)), keys ``<head>.0.*`` as the original's
    builder wrote them (orig moco/moco/builder.py:33-35, 45-47);
    N -> Linear(feat, N), ReLU, Linear(N, out), keys ``<head>.0.*``/``<head>.2.*``.
    """
    if hidden < -1:
        raise UserError(f"--hidden {hidden}: expected -1 (feature width), 0 (no hidden layer) or a positive width")
    if not mlp:
        return nn.Linear(feat_dim, out_dim)
    if hidden == 0:
        return nn.Sequential(nn.Linear(feat_dim, out_dim))
    width = feat_dim if hidden == -1 else hidden
    return nn.Sequential(nn.Linear(feat_dim, width), nn.ReLU(inplace=True), nn.Linear(width, out_dim))
