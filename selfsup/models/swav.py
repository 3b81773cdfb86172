"""SwAV (Caron et al. 2020): the model and its checkpoint layout. The losses
(Sinkhorn-Knopp, swapped prediction) are in selfsup.methods.losses, the
method in selfsup.methods.swav, the frozen teacher in selfsup.models.teacher.

Checkpoint layout (the official release's): a flat state dict whose trunk
keys are the backbone's own names at top level (``conv1.weight``,
``layer1.0.conv1.weight``, ... for ResNets; ``conv_stem.weight``,
``blocks.*`` for EfficientNet), then ``projection_head.0`` (Linear
feat->hidden), ``projection_head.1`` (BatchNorm1d), ``projection_head.3``
(Linear hidden->feat_dim) and ``prototypes.weight``; DDP-trained files carry
a ``module.`` prefix. :func:`official_state_dict` writes it and
:func:`load_official_state` reads it, so our checkpoints and released SwAV
weights are interchangeable.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core import checkpoint as ck
from selfsup.core.errors import UserError
from selfsup.models.backbones import canonical_arch, create_backbone

HEAD_PREFIXES = ("projection_head.", "prototypes.")


def default_hidden_mlp(arch: str) -> int:
    """Hidden width of the released SwAV models: 8192 for ResNet-50x2, else 2048."""
    return 8192 if canonical_arch(arch) == "resnet50w2" else 2048


class SwAVModel(nn.Module):
    """Backbone + projection head + prototypes.

    ``forward(x)`` takes one tensor or a list of crops (crops of the same
    resolution are batched together, as in SwAV's multi-crop) and returns
    ``(embedding, scores)``: the L2-normalised ``feat_dim`` embedding of every
    crop, concatenated in input order, and its prototype scores (``None``
    when ``nmb_prototypes`` is 0). ``feat_dim=0`` means no projection head
    (the embedding is the normalised backbone feature)."""

    def __init__(
        self,
        arch: str,
        hidden_mlp: int | None = None,
        feat_dim: int = 128,
        nmb_prototypes: int = 3000,
        small_images: bool = False,
        normalize: bool = True,
    ):
        super().__init__()
        self.arch = canonical_arch(arch)
        self.backbone, width = create_backbone(arch, bool(small_images))
        self.small_images = bool(small_images)
        self.hidden_mlp = default_hidden_mlp(arch) if hidden_mlp is None else int(hidden_mlp)
        self.feat_dim, self.nmb_prototypes, self.normalize = int(feat_dim), int(nmb_prototypes), normalize
        self.backbone_width = width
        if self.feat_dim == 0:
            self.projection_head = None
            out = width
        elif self.hidden_mlp == 0:
            self.projection_head = nn.Linear(width, self.feat_dim)
            out = self.feat_dim
        else:
            self.projection_head = nn.Sequential(
                nn.Linear(width, self.hidden_mlp),
                nn.BatchNorm1d(self.hidden_mlp),
                nn.ReLU(inplace=True),
                nn.Linear(self.hidden_mlp, self.feat_dim),
            )
            out = self.feat_dim
        self.prototypes = nn.Linear(out, self.nmb_prototypes, bias=False) if self.nmb_prototypes > 0 else None

    def forward_backbone(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled backbone features of every crop, one backbone call per run of
        crops with the same resolution."""
        if torch.is_tensor(crops):
            return self.backbone(crops)
        feats, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return torch.cat(feats)

    def forward_head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.projection_head(feats) if self.projection_head is not None else feats
        if self.normalize:
            z = F.normalize(z, dim=1, p=2)
        return z, (self.prototypes(z) if self.prototypes is not None else None)

    def embed(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward_head(self.forward_backbone(crops))[0]

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_head(self.forward_backbone(crops))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        if self.prototypes is not None:
            w = self.prototypes.weight
            w.copy_(F.normalize(w.detach().clone(), dim=1, p=2))


# -- checkpoint layout ------------------------------------------------------


def official_state_dict(model: nn.Module, prefix: str = "module.") -> dict[str, torch.Tensor]:
    """`model`'s weights in the official SwAV layout: backbone keys at top level."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("backbone.")
        out[prefix + k] = v
    return out


def to_model_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-layout keys (``module.`` already stripped) -> SwAVModel's keys."""
    return {(k if k.startswith(HEAD_PREFIXES) else f"backbone.{k}"): v for k, v in state.items()}


def _strip_module(state):
    return ck.strip_prefix(state, "module.") if any(k.startswith("module.") for k in state) else dict(state)


def flat_model_state(model: SwAVModel) -> dict[str, torch.Tensor]:
    """SwAVModel's state dict with official (flat) key names, for messages."""
    return {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}


def describe_official_mismatch(model: SwAVModel, state: dict[str, torch.Tensor], limit: int = 3) -> str:
    return ck.describe_mismatch(flat_model_state(model), state, limit)


def load_official_state(
    model: SwAVModel,
    state: dict[str, torch.Tensor],
    path: str,
    what: str = "checkpoint",
    ignore: Sequence[str] = (),
) -> SwAVModel:
    """Strictly load an official-layout state dict (``module.`` stripped) into
    SwAVModel `model`; keys starting with an entry of `ignore` are dropped.
    Raises one line naming the first mismatched keys."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))} if ignore else state
    problem = describe_official_mismatch(model, state)
    if problem:
        raise UserError(
            f"{what} '{path}' does not fit arch {model.arch} "
            f"(hidden_mlp {model.hidden_mlp}, feat_dim {model.feat_dim}, "
            f"nmb_prototypes {model.nmb_prototypes}): {problem}"
        )
    model.load_state_dict(to_model_keys(state), strict=True)
    return model


class SwAVEncoder(SwAVModel):
    """A SwAVModel whose ``forward(x)`` is the embedding alone (``embed``):
    the encoder of a frozen SwAV-layout teacher. Same parameters and keys."""

    def forward(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return self.embed(crops)


def _infer_hidden(state):
    if "projection_head.0.weight" in state:
        return int(state["projection_head.0.weight"].shape[0])
    if "projection_head.weight" in state:
        return 0
    return None


def _infer_small(state, ckpt):
    if isinstance(ckpt, dict) and "small_images" in ckpt:
        return bool(ckpt["small_images"])
    w = state.get("conv1.weight")
    return bool(w is not None and w.dim() == 4 and w.shape[-1] == 3)


def load_swav_encoder(
    arch: str,
    path: str,
    hidden_mlp: int | None = None,
    feat_dim: int = 128,
    nmb_prototypes: int = 0,
    small_images: bool | None = None,
    normalize: bool = True,
    what: str = "teacher checkpoint",
) -> SwAVEncoder:
    """A SwAVEncoder with the weights of an official SwAV release (plain state
    dict, ``module.`` prefix) or one of our SwAV checkpoints. The
    DeepCluster-v2 and SeLa-v2 releases (arch ``DCresnet50``/``SELAresnet50``)
    share that layout; their several prototype heads
    (``prototypes.prototypes0.*``, ...) are ignored like any prototypes.

    hidden_mlp None: read from the checkpoint (2048 for ResNet-50, 8192 for
    ResNet-50x2). nmb_prototypes 0: the checkpoint's prototypes are ignored.
    small_images None: the checkpoint's setting (ours) or the stem's shape.
    normalize: L2-normalise the embedding (the official model's
    ``normalize=True``) or return the raw projection.
    Raises UserError naming the first mismatched keys/shapes."""
    ckpt = ck.load_file(path, what)
    state = _strip_module(ck.state_dict_of(ckpt, path))
    if hidden_mlp is None:
        hidden_mlp = _infer_hidden(state)
        if hidden_mlp is None:
            hidden_mlp = default_hidden_mlp(arch)
    if small_images is None:
        small_images = _infer_small(state, ckpt)
    model = SwAVEncoder(
        arch,
        hidden_mlp=hidden_mlp,
        feat_dim=feat_dim,
        nmb_prototypes=nmb_prototypes,
        small_images=small_images,
        normalize=bool(normalize),
    )
    ignore = () if nmb_prototypes else ("prototypes.",)
    # Our checkpoints may hold other entries (e.g. the run's flags): only the SwAV model's keys are compared.
    load_official_state(model, state, path, what, ignore=ignore)
    return model
