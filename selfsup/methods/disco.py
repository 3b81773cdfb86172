"""DisCo (Gao et al., ECCV 2022): MoCo-v2 plus a consistency term that pulls
the student's final embedding onto a frozen teacher's; and the RKD
comparison (Park et al., CVPR 2019) on the same embeddings."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

import torch
from torch import nn

from selfsup.core import distributed as du
from selfsup.core.errors import UserError
from selfsup.methods.losses import distill_mse, rkd_angle, rkd_distance
from selfsup.methods.moco import MoCo, one_process_bn_groups
from selfsup.models.encoders import build_query_encoder
from selfsup.models.split_bn import bn_groups, bn_groups_set
from selfsup.models.teacher import freeze_bn_statistics, load_teacher


class DistilledMoCo(MoCo):
    """MoCo-v2 whose query encoder also embeds the key view, next to a frozen
    teacher that embeds both views. Subclasses add `distill_loss`.

    teacher_bn 'train' (the default, the original's: its teacher sat inside
    the training module, so `model.train()` reached it; orig DisCo/main.py:422)
    normalises with batch statistics, per BN group when one process holds the
    batch, without updating the teacher's running averages (see
    freeze_bn_statistics); 'eval' runs the teacher as the fixed function it
    was trained into, on its running statistics."""

    def __init__(self, encoder_q: nn.Module, teacher: nn.Module, teacher_bn: str = "train", **moco_kwargs):
        super().__init__(encoder_q, **moco_kwargs)
        if teacher_bn not in ("eval", "train"):
            raise ValueError(f"teacher_bn must be 'eval' or 'train', not {teacher_bn!r}")
        if teacher_bn == "train":  # batch statistics: per BN group, as in the student
            teacher = one_process_bn_groups(teacher, self.bn_splits)
        self.teacher, self.teacher_bn = teacher, teacher_bn
        for p in self.teacher.parameters():
            p.requires_grad = False
        if teacher_bn == "train":
            freeze_bn_statistics(self.teacher)

    def train(self, mode: bool = True) -> DistilledMoCo:
        super().train(mode)
        self.teacher.train(mode and self.teacher_bn == "train")
        return self

    def mse_term(self, q1: torch.Tensor, q2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        """DisCo's MSE on both views. The original summed it over each GPU's
        slice of the batch, and DDP averaged the GPUs' gradients; one process
        standing in for `bn_splits` GPUs (its BN groups) divides its sum by
        their number, so the term weighs against InfoNCE as it did there."""
        loss = distill_mse(q1, t1, self.mse_reduction) + distill_mse(q2, t2, self.mse_reduction)
        if self.mse_reduction == "sum" and du.world_size() == 1:
            loss = loss / bn_groups(q1.shape[0], self.bn_splits)
        return loss

    @torch.no_grad()
    def embed_teacher(self, im: torch.Tensor) -> torch.Tensor:
        with bn_groups_set(self.teacher, self.bn_splits):  # split layers only with teacher_bn 'train'
            return self.teacher(im).float()

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        q1, q2 = self.embed_query(im_q), self.embed_query(im_k)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self.encode_keys(im_k)
            t1, t2 = self.embed_teacher(im_q), self.embed_teacher(im_k)
        loss_nce, logits, labels = self.contrast(q1, k)
        terms = self.distill_loss(q1, q2, t1, t2)
        loss = sum(terms.values()) + (0.0 if getattr(self, "only_mse", False) else loss_nce)
        return {
            "loss": loss,
            "loss_nce": loss_nce.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "logits": logits,
            "labels": labels,
        }


class DisCo(DistilledMoCo):
    """loss = InfoNCE(q1, k) + MSE(q1, t1) + MSE(q2, t2); with only_mse the
    contrastive term is dropped (`--only-mse`)."""

    def __init__(
        self, encoder_q: nn.Module, teacher: nn.Module, only_mse: bool = False, mse_reduction: str = "sum", **kwargs
    ):
        super().__init__(encoder_q, teacher, **kwargs)
        self.only_mse, self.mse_reduction = only_mse, mse_reduction

    def distill_loss(
        self, q1: torch.Tensor, q2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {"loss_mse": self.mse_term(q1, q2, t1, t2)}


class MoCoRKD(DistilledMoCo):
    """loss = InfoNCE + w_d * RKD-distance + w_a * RKD-angle, plus DisCo's MSE
    on both views with use_mse (the RKD+DisCo row of Table 2).

    The defaults are the original's (orig DisCo/main_moco_distill_rkd.py:
    457-474): weights 1 and 1, RKD between the normalised student and teacher
    embeddings of the first view only. views=2 adds the second view's pair."""

    def __init__(
        self,
        encoder_q: nn.Module,
        teacher: nn.Module,
        dist_weight: float = 1.0,
        angle_weight: float = 1.0,
        views: int = 1,
        use_mse: bool = False,
        mse_reduction: str = "sum",
        **kwargs,
    ):
        super().__init__(encoder_q, teacher, **kwargs)
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, not {views!r}")
        self.dist_weight, self.angle_weight, self.views = dist_weight, angle_weight, views
        self.use_mse, self.mse_reduction = use_mse, mse_reduction

    def rkd_term(
        self,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """loss_fn summed over the (student, teacher) view pairs. Each GPU of
        the original related only its own samples (and DDP averaged the
        GPUs' gradients); one process standing in for `bn_splits` GPUs
        therefore averages loss_fn over its BN groups."""
        groups = bn_groups(pairs[0][0].shape[0], self.bn_splits) if du.world_size() == 1 else 1
        total = 0.0
        for s, t in pairs:
            total = total + sum(loss_fn(a, b) for a, b in zip(s.tensor_split(groups), t.tensor_split(groups))) / groups
        return total

    def distill_loss(
        self, q1: torch.Tensor, q2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pairs = [(q1, t1), (q2, t2)][: self.views]
        terms = {
            "loss_rkd_dist": self.dist_weight * self.rkd_term(rkd_distance, pairs),
            "loss_rkd_angle": self.angle_weight * self.rkd_term(rkd_angle, pairs),
        }
        if self.use_mse:
            terms["loss_mse"] = self.mse_term(q1, q2, t1, t2)
        return terms


def _teacher_for(args):
    """The frozen teacher, and --moco-dim sized to its embedding: a width left
    at its default follows the teacher (printed); one given explicitly must
    equal it."""
    teacher = load_teacher(args.teacher_arch, args.teacher, nmb_prototypes=args.nmb_prototypes)
    size = args.image_size
    try:
        with torch.no_grad():  # one tiny batch: the embedding widths must agree before training starts
            width = teacher.eval()(torch.zeros(2, 3, size, size)).shape[1]
    except (AssertionError, RuntimeError) as exc:  # e.g. DINOv2's 14 px patches and a 32 px crop
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"teacher --teacher_arch {args.teacher_arch} cannot embed --image-size {size} crops: {first}"
        ) from None
    if width != args.moco_dim:
        if getattr(args, "moco_dim_given", True):
            raise UserError(
                f"teacher '{args.teacher}' embeds into {width} dimensions, the student into "
                f"--moco-dim {args.moco_dim}: they must be equal"
            )
        if du.is_main_process():
            print(f"=> --moco-dim {width}: the width of the teacher's embedding ({args.teacher_arch})", flush=True)
        args.moco_dim = width
    return teacher


def _moco_kwargs(args):
    return {
        "dim": args.moco_dim,
        "K": args.moco_k,
        "m": args.moco_m,
        "T": args.moco_t,
        "bn_splits": args.bn_splits,
        "teacher_bn": args.teacher_bn,
    }


def build_disco(args: argparse.Namespace) -> DisCo:
    teacher = _teacher_for(args)  # first: it may set --moco-dim
    return DisCo(
        build_query_encoder(args),
        teacher,
        only_mse=args.only_mse,
        mse_reduction=args.mse_reduction,
        **_moco_kwargs(args),
    )


def build_moco_rkd(args: argparse.Namespace) -> MoCoRKD:
    teacher = _teacher_for(args)  # first: it may set --moco-dim
    return MoCoRKD(
        build_query_encoder(args),
        teacher,
        dist_weight=args.rkd_dist_weight,
        angle_weight=args.rkd_angle_weight,
        views=args.rkd_views,
        use_mse=args.use_mse,
        mse_reduction=args.mse_reduction,
        **_moco_kwargs(args),
    )
