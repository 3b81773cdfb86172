"""Losses as pure functions of embeddings: MoCo's InfoNCE, DisCo's MSE,
RKD's distance and angle terms, SwAV's Sinkhorn codes and swapped
prediction, and SwAV + DisCo's combination."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.core import distributed as du


def info_nce_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo logits: column 0 is the positive q.k, the rest q against the queue.

    q, k: (N, C) L2-normalised; queue: (C, K). Computed in fp32 whatever the
    autocast dtype, since logits / 0.2 are sensitive to rounding: autocast
    would run the matmul in bf16/fp16 even on fp32 inputs, so it is off here."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, queue = q.float(), k.float(), queue.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return logits, labels


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, labels = info_nce_logits(q, k, queue, temperature)
    return F.cross_entropy(logits, labels), logits, labels


def distill_mse(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """DisCo's consistency term: squared distance between the student's and the
    frozen teacher's L2-normalised embeddings. The original sums over the
    batch and the embedding dimensions (``reduction='sum'``)."""
    return F.mse_loss(student.float(), teacher.float().detach(), reduction=reduction)


def _pairwise_distances(e, eps=1e-12):
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp(min=eps)
    d = d2.sqrt()
    d = d.clone()
    d.fill_diagonal_(0)
    return d


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019): smooth-L1 between pairwise
    distance matrices, each divided by its mean off-diagonal distance."""
    with torch.no_grad():
        t_d = _pairwise_distances(teacher.float())
        t_d = t_d / t_d[t_d > 0].mean()
    s_d = _pairwise_distances(student.float())
    s_d = s_d / s_d[s_d > 0].mean()
    return F.smooth_l1_loss(s_d, t_d)


def _angles(e):
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # (N, N, C): e_j - e_i
    diff = F.normalize(diff, p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)  # cos of angle at i for (j, k)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss: smooth-L1 between the cosines of the angles that
    every triplet of embeddings forms."""
    with torch.no_grad():
        t_a = _angles(teacher.float())
    return F.smooth_l1_loss(_angles(student.float()), t_a)


# -- SwAV (Caron et al. 2020) ---------------------------------------------------


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
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition soft assignment of the samples to the prototypes.

    scores: (B, K) prototype scores of this rank's B samples (the batch is
    split over the ranks of the process group). Returns (B, K) codes, each
    row summing to 1, each prototype getting about B_total/K of the mass.

    The same iterations as SwAV's (exp(scores/eps), then alternate
    normalisation of prototype rows and sample columns) carried out in log
    space in fp32: nothing overflows or underflows whatever the dtype or
    scale of `scores`."""
    log_q = scores.detach().float().t() / epsilon  # (K, B)
    k = log_q.shape[0]
    b_total = log_q.shape[1] * du.world_size()
    for _ in range(iterations):
        log_q = log_q - _row_logsumexp_all_ranks(log_q) - math.log(k)  # each prototype: mass 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b_total)  # each sample: 1/B
    return torch.exp(log_q + math.log(b_total)).t()


def swav_loss(
    embedding: torch.Tensor,
    scores: torch.Tensor,
    batch_size: int,
    crops_for_assign: Sequence[int] = (0, 1),
    temperature: float = 0.1,
    epsilon: float = 0.05,
    sinkhorn_iterations: int = 3,
    queue: torch.Tensor | None = None,
    prototypes: torch.Tensor | None = None,
    use_the_queue: bool = False,
) -> tuple[torch.Tensor, bool]:
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
            out = scores[batch_size * crop_id : batch_size * (crop_id + 1)].detach().float()
            if queue is not None:
                if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                    use_the_queue = True
                    out = torch.cat((queue[i].float() @ prototypes.detach().float().t(), out))
                queue[i, batch_size:] = queue[i, :-batch_size].clone()
                queue[i, :batch_size] = embedding[crop_id * batch_size : (crop_id + 1) * batch_size].to(queue.dtype)
            q = sinkhorn(out, epsilon, sinkhorn_iterations)[-batch_size:]
        subloss = 0.0
        others = [v for v in range(n_crops) if v != crop_id]
        for v in others:
            x = scores[batch_size * v : batch_size * (v + 1)].float() / temperature
            subloss = subloss - torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss = loss + subloss / len(others)
    return loss / len(crops_for_assign), use_the_queue


def swav_disco_loss(
    swav: torch.Tensor,
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    n_assign: int,
    mse_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SwAV + DisCo loss of the original main_swav_distill.py:
    ``(sum over crops_for_assign of the swapped losses + mse_weight * MSE) / n_assign``.

    swav: :func:`swav_loss`'s value, already divided by n_assign, so only the
    MSE gets the division (x0.5 with two crops for assignment). The MSE is
    the mean over all crops and dimensions of the squared difference between
    the student's (normalised) and the teacher's embedding of every crop.
    Returns (loss, mse)."""
    mse = F.mse_loss(student_embedding.float(), teacher_embedding.float())
    return swav + mse_weight * mse / n_assign, mse
