"""Weighted k-nearest-neighbour accuracy of frozen features (Wu et al. 2018,
as MoCo's CIFAR demo monitors it): no training and no hyper-parameters to
tune, so it is a cheap, stable probe of a short pretraining run next to the
linear evaluation."""

import torch
import torch.nn.functional as F

from selfsup.analysis.embeddings import extract
from selfsup.data import augment
from selfsup.data import folders as D
from selfsup.models.backbones import create_backbone
from selfsup.models.encoders import load_backbone


def knn_predict(train_feats, train_labels, query_feats, num_classes, k=20, t=0.07):
    """Class predicted for each query: the k most cosine-similar training
    samples vote with weight exp(similarity / t)."""
    train_feats = F.normalize(train_feats.float(), dim=1)
    query_feats = F.normalize(query_feats.float(), dim=1)
    k = min(k, train_feats.shape[0])
    sims, idx = (query_feats @ train_feats.t()).topk(k, dim=1)
    votes = torch.zeros(query_feats.shape[0], num_classes, dtype=sims.dtype)
    votes.scatter_add_(1, train_labels[idx], (sims / t).exp())
    return votes.argmax(dim=1)


def knn_accuracy(train_feats, train_labels, query_feats, query_labels, k=20, t=0.07):
    """Top-1 accuracy (percent) of knn_predict."""
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    pred = knn_predict(train_feats, train_labels, query_feats, num_classes, k, t)
    return 100.0 * (pred == query_labels).float().mean().item()


def checkpoint_knn(arch, checkpoint, data, image_size, k=20, t=0.07, batch_size=200, workers=0):
    """kNN top-1 on `data`/val with `data`/train as the memory bank, for the
    backbone of a pretraining checkpoint (checkpoint=None: random init)."""
    if checkpoint is None:
        model = create_backbone(arch)[0]
    else:
        model = load_backbone(arch, checkpoint)
    feats = {}
    for split in ("train", "val"):
        dataset = D.image_folder(D.split_folder(data, split), augment.eval_transform(image_size))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        feats[split] = [torch.from_numpy(a) for a in extract(model, loader)]
    return knn_accuracy(*feats["train"], *feats["val"], k=k, t=t)
