"""Weighted k-nearest-neighbour accuracy of frozen features (Wu et al. 2018,
as MoCo's CIFAR demo monitors it): no training and no hyper-parameters to
tune, so it is a cheap, stable probe of a short pretraining run next to the
linear evaluation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.analysis.embeddings import extract
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.models.backbones import create_backbone
from selfsup.models.encoders import load_backbone


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    t: float = 0.07,
) -> torch.Tensor:
    """Class predicted for each query: the k most cosine-similar training
    samples vote with weight exp(similarity / t)."""
    train_feats = F.normalize(train_feats.float(), dim=1)
    query_feats = F.normalize(query_feats.float(), dim=1)
    k = min(k, train_feats.shape[0])
    sims, idx = (query_feats @ train_feats.t()).topk(k, dim=1)
    votes = torch.zeros(query_feats.shape[0], num_classes, dtype=sims.dtype)
    votes.scatter_add_(1, train_labels[idx], (sims / t).exp())
    return votes.argmax(dim=1)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    query_feats: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 20,
    t: float = 0.07,
) -> float:
    """Top-1 accuracy (percent) of knn_predict."""
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, query_feats, num_classes, k, t)
    return 100.0 * (pred == query_labels).float().mean().item()


def checkpoint_knn(
    arch: str,
    checkpoint: str | None,
    data: str,
    image_size: int,
    k: int = 20,
    t: float = 0.07,
    batch_size: int = 200,
    workers: int = 0,
    seed: int = 0,
) -> float:
    """kNN top-1 on `data`/val with `data`/train as the memory bank, for the
    backbone of a pretraining checkpoint (checkpoint=None: a random init
    drawn from `seed`, so that the figure does not depend on what ran before)."""
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_backbone(arch)[0]
    else:
        model = load_backbone(arch, checkpoint)
    feats = {}
    for split in ("train", "val"):
        dataset = D.image_folder(D.split_folder(data, split), augment.eval_transform(image_size))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        feats[split] = [torch.from_numpy(a) for a in extract(model, loader)]
    return knn_accuracy(*feats["train"], *feats["val"], k=k, t=t)
