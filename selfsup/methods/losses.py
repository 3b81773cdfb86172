"""Losses as pure functions of embeddings."""
import torch
import torch.nn.functional as F


def info_nce_logits(q, k, queue, temperature):
    """MoCo logits: column 0 is the positive q.k, the rest q against the queue.

    q, k: (N, C) L2-normalised; queue: (C, K). Computed in fp32 whatever the
    autocast dtype, since logits / 0.2 are sensitive to rounding."""
    q, k, queue = q.float(), k.float(), queue.float()
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return logits, labels


def info_nce(q, k, queue, temperature):
    logits, labels = info_nce_logits(q, k, queue, temperature)
    return F.cross_entropy(logits, labels), logits, labels


def distill_mse(student, teacher, reduction="sum"):
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


def rkd_distance(student, teacher):
    """RKD distance-wise loss (Park et al. 2019): smooth-L1 between pairwise
    distance matrices, each divided by its mean off-diagonal distance."""
    with torch.no_grad():
        t_d = _pairwise_distances(teacher.float())
        t_d = t_d / t_d[t_d > 0].mean()
    s_d = _pairwise_distances(student.float())
    s_d = s_d / s_d[s_d > 0].mean()
    return F.smooth_l1_loss(s_d, t_d)


def _angles(e):
    diff = e.unsqueeze(0) - e.unsqueeze(1)              # (N, N, C): e_j - e_i
    diff = F.normalize(diff, p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)  # cos of angle at i for (j, k)


def rkd_angle(student, teacher):
    """RKD angle-wise loss: smooth-L1 between the cosines of the angles that
    every triplet of embeddings forms."""
    with torch.no_grad():
        t_a = _angles(teacher.float())
    return F.smooth_l1_loss(_angles(student.float()), t_a)
