"""SwAV (Caron et al. 2020) and SwAV + DisCo (the original
swav-master/main_swav_distill.py) as methods: modules whose
``forward(crops)`` returns a dict with ``loss`` (what is optimised) and its
``loss_*`` parts, as MoCo and DisCo do (selfsup.methods.moco, disco).

A method holds the SwAV model (or its DDP wrapper), the feature queue and
whether the queue is in use yet; the loop (selfsup.engine.swav_train) owns
the data, optimiser, schedule and checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from selfsup.core.distributed import unwrap
from selfsup.methods.losses import swav_disco_loss, swav_loss
from selfsup.models.teacher import EmbeddingTeacher, load_swav_teacher


class SwAV(nn.Module):
    """Swapped prediction of Sinkhorn codes between the crops of an image.

    model: a SwAVModel, or the DDP wrapper of one. The forward passes run
    under whatever autocast the caller set; the codes and losses are
    computed in fp32 with autocast off (selfsup.methods.losses)."""

    def __init__(
        self,
        model: nn.Module,
        crops_for_assign: Sequence[int] = (0, 1),
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
    ):
        super().__init__()
        self.model = model
        self.crops_for_assign, self.temperature = list(crops_for_assign), temperature
        self.epsilon, self.sinkhorn_iterations = epsilon, sinkhorn_iterations
        self.queue: torch.Tensor | None = None  # (len(crops_for_assign), L, feat_dim), set by the loop
        self.use_the_queue = False  # becomes True once the queue is full

    @property
    def net(self) -> nn.Module:
        """The SwAVModel itself (not its DDP wrapper)."""
        return unwrap(self.model)

    def drop_prototype_gradients(self) -> None:
        """Between backward and step during --freeze_prototypes_niters: the
        prototypes get no update (their gradient is dropped, as the original)."""
        for p in self.net.prototypes.parameters():
            p.grad = None

    def swapped_loss(self, embedding: torch.Tensor, scores: torch.Tensor, batch_size: int) -> torch.Tensor:
        """swav_loss of this batch against (and into) the queue, in fp32."""
        with torch.autocast(embedding.device.type, enabled=False):
            loss, self.use_the_queue = swav_loss(
                embedding,
                scores,
                batch_size,
                self.crops_for_assign,
                self.temperature,
                self.epsilon,
                self.sinkhorn_iterations,
                queue=self.queue,
                prototypes=self.net.prototypes.weight,
                use_the_queue=self.use_the_queue,
            )
        return loss

    def encode(self, crops: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prototypes L2-normalised (before every step, as the original),
        then the model's (embedding, scores) of every crop."""
        with torch.autocast(crops[0].device.type, enabled=False):
            self.net.normalize_prototypes()
        return self.model(crops)

    def forward(self, crops: Sequence[torch.Tensor]) -> dict[str, Any]:
        embedding, scores = self.encode(crops)
        return {"loss": self.swapped_loss(embedding, scores, crops[0].shape[0])}


class SwAVDisCo(SwAV):
    """SwAV + the DisCo MSE between the student's embedding of every crop and
    a frozen teacher's: loss = SwAV + mse_weight * MSE / len(crops_for_assign)
    (selfsup.methods.losses.swav_disco_loss). The teacher stays in eval mode
    whatever mode the method is put in, as the original's."""

    def __init__(self, model: nn.Module, teacher: EmbeddingTeacher, mse_weight: float = 1.0, **swav_kwargs):
        super().__init__(model, **swav_kwargs)
        self.teacher, self.mse_weight = teacher, mse_weight
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.teacher.eval()

    def train(self, mode: bool = True) -> SwAVDisCo:
        super().train(mode)
        self.teacher.train(False)
        return self

    def forward(self, crops: Sequence[torch.Tensor]) -> dict[str, Any]:
        embedding, scores = self.encode(crops)
        with torch.no_grad():
            t_embedding = self.teacher(crops)
        swav = self.swapped_loss(embedding, scores, crops[0].shape[0])
        with torch.autocast(embedding.device.type, enabled=False):
            loss, mse = swav_disco_loss(swav, embedding, t_embedding, len(self.crops_for_assign), self.mse_weight)
        return {"loss": loss, "loss_swav": swav.detach(), "loss_mse": mse.detach()}


def swav_kwargs(args: Any) -> dict[str, Any]:
    return {
        "crops_for_assign": args.crops_for_assign,
        "temperature": args.temperature,
        "epsilon": args.epsilon,
        "sinkhorn_iterations": args.sinkhorn_iterations,
    }


def load_distill_teacher(args: Any) -> EmbeddingTeacher:
    """The frozen teacher of main_swav_distill.py. The original builds it
    without normalize=True (orig:swav-master/main_swav_distill.py:203-206,
    default False in src/resnet50.py:150): its raw projection is the target
    (--teacher_normalize true normalises it)."""
    return load_swav_teacher(
        args.teacher_arch,
        args.teacher,
        hidden_mlp=args.teacher_hidden_mlp,
        feat_dim=args.feat_dim,
        normalize=args.teacher_normalize,
    )


def build_swav(args: Any, model: nn.Module, teacher: EmbeddingTeacher | None = None) -> SwAV:
    """SwAV around `model`, or SwAV + DisCo when a teacher is given."""
    if teacher is None:
        return SwAV(model, **swav_kwargs(args))
    return SwAVDisCo(model, teacher, mse_weight=args.mse_weight, **swav_kwargs(args))
