"""MoCo-v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by
InfoNCE against a momentum key encoder and a queue of past keys."""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core import distributed as du
from selfsup.methods.losses import info_nce
from selfsup.models.encoders import build_query_encoder
from selfsup.models.split_bn import bn_groups_set, convert_split_bn


def one_process_bn_groups(module: nn.Module, bn_splits: int) -> nn.Module:
    """`module` with split-BN layers swapped in for its BatchNorms when one
    process stands for `bn_splits` GPUs (torch.distributed's shuffle-BN
    replaces them otherwise). The layers stay plain BN except inside
    bn_groups_set, i.e. inside the method's own forwards."""
    if du.world_size() == 1 and bn_splits > 1:
        return convert_split_bn(module)
    return module


class MoCo(nn.Module):
    def __init__(
        self,
        encoder_q: nn.Module,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        bn_splits: int = 8,
    ):
        """encoder_q: backbone with its projection head attached (output `dim`).
        bn_splits: BN groups when one process holds the whole batch (shuffle-BN
        across processes replaces it when torch.distributed runs)."""
        super().__init__()
        self.K, self.m, self.T, self.bn_splits = K, m, T, bn_splits
        self.encoder_q = one_process_bn_groups(encoder_q, bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)  # with the same layers: the same state_dict keys
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
    def encode_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Normalised keys, computed so that each key's BN statistics come from
        a different set of samples than its query's (shuffle-BN)."""
        if du.world_size() > 1:
            return self._keys_shuffled_across_ranks(im_k)
        perm = torch.randperm(im_k.shape[0], device=im_k.device)
        with bn_groups_set(self.encoder_k, self.bn_splits):
            k = self.encoder_k(im_k[perm])
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
    def embed_query(self, im: torch.Tensor) -> torch.Tensor:
        with bn_groups_set(self.encoder_q, self.bn_splits):  # no split layers under torch.distributed
            return F.normalize(self.encoder_q(im).float(), dim=1)

    def contrast(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """InfoNCE of queries against their keys and the queue; enqueues k."""
        loss, logits, labels = info_nce(q, k, self.queue.clone().detach(), self.T)
        self._dequeue_and_enqueue(k)
        return loss, logits, labels

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.embed_query(im_q)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self.encode_keys(im_k)
        loss, logits, labels = self.contrast(q, k)
        return {"loss": loss, "logits": logits, "labels": labels}


def build_moco(args: argparse.Namespace) -> MoCo:
    return MoCo(build_query_encoder(args), args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.bn_splits)
