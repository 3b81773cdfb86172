"""LARS as SwAV uses it (apex's LARC with clip=False, trust coefficient
0.001; orig swav main_swav.py), around any optimiser.

Before the wrapped optimiser's step, each parameter's gradient becomes
``trust * |w| / (|g| + wd * |w| + eps) * (g + wd * w)``; parameters whose
weight or gradient norm is zero keep their plain gradient and get no weight
decay. The wrapped optimiser's own weight decay is switched off meanwhile.

Mixed precision: hand LARS to ``Precision.backward_step`` (or
``GradScaler.step``) like any optimiser. The scaler unscales the gradients
of ``param_groups`` before it calls ``step()``, and skips the step when one
is not finite, so the trust ratios always see the true gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class LARS:
    def __init__(self, optimizer: torch.optim.Optimizer, trust_coefficient: float = 0.001, eps: float = 1e-8):
        self.optim, self.trust_coefficient, self.eps = optimizer, trust_coefficient, eps

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optim.param_groups

    @property
    def state(self) -> dict[Any, Any]:
        return self.optim.state

    def state_dict(self) -> dict[str, Any]:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def adapt_gradients(self) -> None:
        for group in self.optim.param_groups:
            wd = group.get("weight_decay", 0.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                p_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                if p_norm != 0 and g_norm != 0:
                    rate = self.trust_coefficient * p_norm / (g_norm + p_norm * wd + self.eps)
                    p.grad.add_(p, alpha=wd).mul_(rate)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        self.adapt_gradients()
        saved = [g.get("weight_decay", 0.0) for g in self.optim.param_groups]
        for g in self.optim.param_groups:
            g["weight_decay"] = 0.0
        try:
            return self.optim.step(closure) if closure is not None else self.optim.step()
        finally:
            for g, wd in zip(self.optim.param_groups, saved):
                g["weight_decay"] = wd
