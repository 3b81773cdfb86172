"""SwAV (Caron et al. 2020): model, Sinkhorn-Knopp, swapped-prediction loss,
and a loader for SwAV teachers (official release or our own checkpoints).

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
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from selfsup.core import checkpoint as ck
from selfsup.core import distributed as du
from selfsup.models.backbones import canonical_arch, create_backbone
from selfsup.core.errors import UserError

HEAD_PREFIXES = ("projection_head.", "prototypes.")


def default_hidden_mlp(arch):
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

    def __init__(self, arch, hidden_mlp=None, feat_dim=128, nmb_prototypes=3000, small_images=False,
                 normalize=True):
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
                nn.Linear(width, self.hidden_mlp), nn.BatchNorm1d(self.hidden_mlp), nn.ReLU(inplace=True),
                nn.Linear(self.hidden_mlp, self.feat_dim))
            out = self.feat_dim
        self.prototypes = nn.Linear(out, self.nmb_prototypes, bias=False) if self.nmb_prototypes > 0 else None

    def forward_backbone(self, crops):
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

    def forward_head(self, feats):
        z = self.projection_head(feats) if self.projection_head is not None else feats
        if self.normalize:
            z = F.normalize(z, dim=1, p=2)
        return z, (self.prototypes(z) if self.prototypes is not None else None)

    def embed(self, crops):
        return self.forward_head(self.forward_backbone(crops))[0]

    def forward(self, crops):
        return self.forward_head(self.forward_backbone(crops))

    @torch.no_grad()
    def normalize_prototypes(self):
        if self.prototypes is not None:
            w = self.prototypes.weight
            w.copy_(F.normalize(w.detach().clone(), dim=1, p=2))


# -- checkpoint layout ------------------------------------------------------

def official_state_dict(model, prefix="module."):
    """`model`'s weights in the official SwAV layout: backbone keys at top level."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        out[prefix + k] = v
    return out


def to_model_keys(state):
    """Official-layout keys (``module.`` already stripped) -> SwAVModel's keys."""
    return {(k if k.startswith(HEAD_PREFIXES) else f"backbone.{k}"): v for k, v in state.items()}


def _strip_module(state):
    return ck.strip_prefix(state, "module.") if any(k.startswith("module.") for k in state) else dict(state)


def flat_model_state(model):
    """SwAVModel's state dict with official (flat) key names, for messages."""
    return {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in model.state_dict().items()}


def describe_official_mismatch(model, state, limit=3):
    return ck.describe_mismatch(flat_model_state(model), state, limit)


def load_official_state(model, state, path, what="checkpoint", ignore=()):
    """Strictly load an official-layout state dict (``module.`` stripped) into
    SwAVModel `model`; keys starting with an entry of `ignore` are dropped.
    Raises one line naming the first mismatched keys."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))} if ignore else state
    problem = describe_official_mismatch(model, state)
    if problem:
        raise UserError(f"{what} '{path}' does not fit arch {model.arch} "
                        f"(hidden_mlp {model.hidden_mlp}, feat_dim {model.feat_dim}, "
                        f"nmb_prototypes {model.nmb_prototypes}): {problem}")
    model.load_state_dict(to_model_keys(state), strict=True)
    return model


# -- teacher ----------------------------------------------------------------

class FrozenSwAVTeacher(nn.Module):
    """A frozen SwAV model whose ``forward(x)`` returns the L2-normalised
    embedding (after the projection head); DisCo/main.py's SwAV teachers are
    normalised. ``set_normalize(False)`` makes it return the raw projection
    instead, as the teacher of the original main_swav_distill.py (built
    without ``normalize=True``). It stays in eval mode when the
    module holding it is switched to train mode; set ``keep_eval = False``
    to let ``.train()`` reach it (BatchNorm then uses batch statistics, as
    the original DisCo does by accident)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.keep_eval = True
        for p in self.model.parameters():
            p.requires_grad = False
        self.train(False)

    def train(self, mode=True):
        return super().train(False if self.keep_eval else mode)

    def set_normalize(self, normalize):
        """L2-normalise the embedding (True) or return the raw projection."""
        self.model.normalize = bool(normalize)
        return self

    @torch.no_grad()
    def forward(self, x):
        return self.model.embed(x)


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


def load_swav_teacher(arch: str, path: str, hidden_mlp=None, feat_dim: int = 128, nmb_prototypes: int = 0,
                      small_images=None) -> nn.Module:
    """A frozen SwAV teacher in eval mode from an official SwAV release (plain
    state dict, ``module.`` prefix) or one of our SwAV checkpoints. The
    DeepCluster-v2 and SeLa-v2 releases (arch ``DCresnet50``/``SELAresnet50``)
    share that layout; their several prototype heads
    (``prototypes.prototypes0.*``, ...) are ignored like any prototypes.

    hidden_mlp None: read from the checkpoint (2048 for ResNet-50, 8192 for
    ResNet-50x2). nmb_prototypes 0: the checkpoint's prototypes are ignored.
    small_images None: the checkpoint's setting (ours) or the stem's shape.
    Raises UserError naming the first mismatched keys/shapes."""
    ckpt = ck.load_file(path, "teacher checkpoint")
    state = _strip_module(ck.state_dict_of(ckpt, path))
    if hidden_mlp is None:
        hidden_mlp = _infer_hidden(state)
        if hidden_mlp is None:
            hidden_mlp = default_hidden_mlp(arch)
    if small_images is None:
        small_images = _infer_small(state, ckpt)
    model = SwAVModel(arch, hidden_mlp=hidden_mlp, feat_dim=feat_dim, nmb_prototypes=nmb_prototypes,
                      small_images=small_images)
    ignore = () if nmb_prototypes else ("prototypes.",)
    # Our checkpoints may hold other entries (e.g. a distillation teacher is never saved, but be lenient
    # with nothing else): only the SwAV model's keys are compared.
    load_official_state(model, state, path, "teacher checkpoint", ignore=ignore)
    return FrozenSwAVTeacher(model)


# -- Sinkhorn-Knopp and the swapped-prediction loss -------------------------

def _all_reduce(t, op=None):
    if du.world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _row_logsumexp_all_ranks(log_q):
    """logsumexp over dim 1 (the samples), whose columns are split over ranks."""
    m = log_q.max(dim=1, keepdim=True).values
    _all_reduce(m, dist.ReduceOp.MAX if du.world_size() > 1 else None)
    s = torch.exp(log_q - m).sum(dim=1, keepdim=True)
    _all_reduce(s)
    return m + torch.log(s)


@torch.no_grad()
def sinkhorn(scores, epsilon=0.05, iterations=3):
    """Equal-partition soft assignment of the samples to the prototypes.

    scores: (B, K) prototype scores of this rank's B samples (the batch is
    split over the ranks of the process group). Returns (B, K) codes, each
    row summing to 1, each prototype getting about B_total/K of the mass.

    The same iterations as SwAV's (exp(scores/eps), then alternate
    normalisation of prototype rows and sample columns) carried out in log
    space in fp32: nothing overflows or underflows whatever the dtype or
    scale of `scores`."""
    log_q = scores.detach().float().t() / epsilon          # (K, B)
    k = log_q.shape[0]
    b_total = log_q.shape[1] * du.world_size()
    for _ in range(iterations):
        log_q = log_q - _row_logsumexp_all_ranks(log_q) - math.log(k)      # each prototype: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b_total)  # each sample: 1/B
    return torch.exp(log_q + math.log(b_total)).t()


def swav_loss(embedding, scores, batch_size, crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05,
              sinkhorn_iterations=3, queue=None, prototypes=None, use_the_queue=False):
    """SwAV's swapped prediction over multi-crop outputs.

    embedding (N*B, D) and scores (N*B, K) hold the N crops of B images,
    crop-major (crop 0 of every image, then crop 1, ...). For each crop in
    `crops_for_assign` its codes (Sinkhorn of its scores, with the queue's
    scores stacked on top once the queue is filled) are predicted from every
    other crop's softmax(scores / temperature).

    queue: None or a (len(crops_for_assign), L, D) tensor of past embeddings,
    updated in place (newest first); prototypes: the (K, D) prototype weights
    used to score it. Returns (loss, use_the_queue)."""
    n_crops = scores.shape[0] // batch_size
    if n_crops < 2:
        raise ValueError("swav_loss needs at least two crops per image")
    embedding = embedding.detach()
    loss = 0.0
    for i, crop_id in enumerate(crops_for_assign):
        with torch.no_grad():
            out = scores[batch_size * crop_id: batch_size * (crop_id + 1)].detach().float()
            if queue is not None:
                if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                    use_the_queue = True
                    out = torch.cat((queue[i].float() @ prototypes.detach().float().t(), out))
                queue[i, batch_size:] = queue[i, :-batch_size].clone()
                queue[i, :batch_size] = embedding[crop_id * batch_size: (crop_id + 1) * batch_size].to(queue.dtype)
            q = sinkhorn(out, epsilon, sinkhorn_iterations)[-batch_size:]
        subloss = 0.0
        others = [v for v in range(n_crops) if v != crop_id]
        for v in others:
            x = scores[batch_size * v: batch_size * (v + 1)].float() / temperature
            subloss = subloss - torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss = loss + subloss / len(others)
    return loss / len(crops_for_assign), use_the_queue


def swav_disco_loss(swav, student_embedding, teacher_embedding, n_assign, mse_weight=1.0):
    """SwAV + DisCo loss of the original main_swav_distill.py:
    ``(sum over crops_for_assign of the swapped losses + mse_weight * MSE) / n_assign``.

    swav: :func:`swav_loss`'s value, already divided by n_assign, so only the
    MSE gets the division (x0.5 with two crops for assignment). The MSE is
    the mean over all crops and dimensions of the squared difference between
    the student's (normalised) and the teacher's embedding of every crop.
    Returns (loss, mse)."""
    mse = F.mse_loss(student_embedding.float(), teacher_embedding.float())
    return swav + mse_weight * mse / n_assign, mse
