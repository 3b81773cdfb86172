"""MoCo-v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by
InfoNCE against a momentum key encoder and a queue of past keys."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.core import distributed as du
from selfsup.methods.losses import info_nce
from selfsup.models.encoders import build_query_encoder


def bn_groups(batch_size, bn_splits):
    """How many groups forward_in_groups cuts a batch into: `bn_splits`, but
    never groups of fewer than 2 samples (BN needs 2)."""
    return max(1, min(bn_splits, batch_size // 2))


def forward_in_groups(encoder, x, groups):
    """encoder(x) with BatchNorm statistics computed per group of the batch.

    One process sees the whole batch, where several GPUs would each see a
    slice; running the slices separately gives BN the same per-GPU view."""
    groups = bn_groups(x.shape[0], groups)
    if groups == 1:
        return encoder(x)
    return torch.cat([encoder(part) for part in torch.tensor_split(x, groups)])


class MoCo(nn.Module):
    def __init__(self, encoder_q, dim=128, K=65536, m=0.999, T=0.07, bn_splits=8):
        """encoder_q: backbone with its projection head attached (output `dim`).
        bn_splits: BN groups when one process holds the whole batch (shuffle-BN
        across processes replaces it when torch.distributed runs)."""
        super().__init__()
        self.K, self.m, self.T, self.bn_splits = K, m, T, bn_splits
        self.encoder_q = encoder_q
        self.encoder_k = copy.deepcopy(encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # -- key encoder -----------------------------------------------------
    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.m).add_(p_q.detach(), alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = du.concat_all_gather(keys)
        n, ptr = keys.shape[0], int(self.queue_ptr)
        # Wrap around the end, so K need not be a multiple of the batch.
        idx = (ptr + torch.arange(n, device=keys.device)) % self.K
        self.queue[:, idx] = keys.t().to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def encode_keys(self, im_k):
        """Normalised keys, computed so that each key's BN statistics come from
        a different set of samples than its query's (shuffle-BN)."""
        if du.world_size() > 1:
            return self._keys_shuffled_across_ranks(im_k)
        perm = torch.randperm(im_k.shape[0], device=im_k.device)
        k = forward_in_groups(self.encoder_k, im_k[perm], self.bn_splits)
        k = F.normalize(k.float(), dim=1)  # fp32 keys under autocast too: they go into the queue
        return k[torch.argsort(perm)]

    @torch.no_grad()
    def _keys_shuffled_across_ranks(self, im_k):
        x_all = du.concat_all_gather(im_k)
        perm = torch.randperm(x_all.shape[0], device=im_k.device)
        torch.distributed.broadcast(perm, src=0)
        unshuffle = torch.argsort(perm)
        mine = perm.view(du.world_size(), -1)[du.rank()]
        k = F.normalize(self.encoder_k(x_all[mine]).float(), dim=1)
        k_all = du.concat_all_gather(k)
        return k_all[unshuffle.view(du.world_size(), -1)[du.rank()]]

    # -- query encoder ---------------------------------------------------
    def embed_query(self, im):
        groups = self.bn_splits if du.world_size() == 1 else 1
        return F.normalize(forward_in_groups(self.encoder_q, im, groups).float(), dim=1)

    def contrast(self, q, k):
        """InfoNCE of queries against their keys and the queue; enqueues k."""
        loss, logits, labels = info_nce(q, k, self.queue.clone().detach(), self.T)
        self._dequeue_and_enqueue(k)
        return loss, logits, labels

    def forward(self, im_q, im_k):
        q = self.embed_query(im_q)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self.encode_keys(im_k)
        loss, logits, labels = self.contrast(q, k)
        return {"loss": loss, "logits": logits, "labels": labels}


def build_moco(args):
    return MoCo(build_query_encoder(args), args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.bn_splits)
