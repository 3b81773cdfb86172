"""Early signs of a collapsed contrastive run, reported while it trains.

Failure modes seen on small runs (docs/disco.md, "When DisCo collapses"):
- InfoNCE at ln(K+1): every logit equal, the value a constant embedding
  gives against a queue of K keys; training has stopped telling images apart.
- InfoNCE climbing back toward ln(K+1) after its lowest epoch: the
  embeddings are drifting together (a MoCo-v2 teacher on the digits).
- A teacher that maps every image to nearly the same vector: DisCo's summed
  MSE then pulls the student onto that one vector, and the student's InfoNCE
  goes to ln(K+1).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

# Mean pairwise cosine above which a teacher "maps every image to nearly the
# same vector". Measured on the built-in data (256 training images): the old
# demo's 7-epoch ResNet-34 teacher 0.82 (0.93 at epoch 3), whose DisCo
# student collapsed; a 20-epoch ResNet-18 teacher 0.02 (kNN 84%).
TEACHER_SPREAD_WARN = 0.8


def chance_infonce(queue_size: int) -> float:
    """InfoNCE of equal logits: one positive among queue_size + 1."""
    return math.log(queue_size + 1)


def infonce_warning(infonce: float, queue_size: int, epoch: int, rel_tol: float = 0.005) -> str | None:
    """A warning line when the epoch's mean InfoNCE sits at ln(K+1), else None."""
    chance = chance_infonce(queue_size)
    if abs(infonce - chance) > rel_tol * chance:
        return None
    return (
        f"warning: epoch {epoch}: InfoNCE {infonce:.4f} sits at ln(K+1) = {chance:.4f}, the loss of equal "
        "logits: the embeddings have collapsed onto one vector (lower --lr, or for DisCo check the "
        "teacher's spread above; docs/disco.md)"
    )


# Share of the gap between a run's lowest epoch-mean InfoNCE and ln(K+1)
# that the loss may climb back before it is reported. On the digits a
# ResNet-18 MoCo-v2 teacher (20% crops) went from 6.38 (epoch 5) to 6.89
# (epoch 15) with ln(1025) = 6.93, so past this share at epoch 9; its
# embeddings' mean cosine was 1.000 at the end.
RISE_WARN = 0.25


def infonce_rise_warning(losses: Sequence[float], queue_size: int, share: float = RISE_WARN) -> str | None:
    """A warning when the last of the epoch-mean InfoNCE values `losses`
    (index = epoch) has climbed back from the run's lowest by more than
    `share` of the way to ln(K+1), else None. Epoch 0 is left out: its
    first steps contrast against the random initial queue, an easier task."""
    chance = chance_infonce(queue_size)
    later = list(losses[1:])
    if len(later) < 2:
        return None
    best_epoch = 1 + min(range(len(later)), key=later.__getitem__)
    best, last = losses[best_epoch], later[-1]
    if best >= chance or last - best <= share * (chance - best):
        return None
    return (
        f"warning: epoch {len(losses) - 1}: InfoNCE {last:.4f} has climbed back from {best:.4f} (epoch "
        f"{best_epoch}) toward ln(K+1) = {chance:.4f}: the embeddings are drifting onto one vector; more "
        "epochs will not help (for a DisCo teacher, check its spread; docs/disco.md)"
    )


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cosine between the rows of z over all pairs of distinct rows."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    gram = z @ z.t()
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def embedding_spread(
    embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int = 64
) -> float:
    """mean_pairwise_cosine of embed(batch) over `images` (a tensor N x C x H x W)."""
    return mean_pairwise_cosine(torch.cat([embed(part) for part in images.split(batch_size)]))


def spread_report(spread: float, n: int) -> str:
    """The line printed before DisCo trains, and a warning when the teacher
    maps every image to nearly the same vector."""
    line = f"=> teacher embedding spread on {n} training images: mean pairwise cosine {spread:.3f}"
    if spread > TEACHER_SPREAD_WARN:
        line += (
            f"\nwarning: the teacher maps these images to nearly the same vector (mean cosine > "
            f"{TEACHER_SPREAD_WARN}): distilling it pulls the student onto one point (docs/disco.md)"
        )
    return line
